"""Shard schema: encode/decode round trips, validation errors, and the shard writer."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from dp_train.shards import (
    DEPTH_FORMATS,
    Sample,
    SampleError,
    SampleMeta,
    ShardIndexError,
    ShardWriter,
    auto_png_scale,
    decode_sample,
    encode_sample,
    make_sample,
    read_index,
    shard_urls,
)

META = SampleMeta(dataset="unit", f_px=100.0, metric=True, synthetic=True)


def _sample(key: str = "s0", h: int = 12, w: int = 16, seed: int = 0, **kw) -> Sample:
    """A random sample with depth in [0.5, 80] m."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    depth = rng.uniform(0.5, 80.0, (h, w)).astype(np.float32)
    return make_sample(key, image, depth, META, **kw)


def _roundtrip(sample: Sample, **kw) -> Sample:
    return decode_sample(encode_sample(sample, **kw))


# ----------------------------------------------------------------------------- round trips


def test_npy32_roundtrip_is_exact_and_png_image_lossless():
    s = _sample()
    out = _roundtrip(s, depth_format="npy32", image_format="png")
    assert out.key == s.key and out.meta == s.meta
    np.testing.assert_array_equal(out.image, s.image)
    np.testing.assert_array_equal(out.depth, s.depth)
    assert out.depth.dtype == np.float32 and out.valid.all() and out.alpha is None


def test_npy16_roundtrip_within_float16_precision():
    s = _sample()
    out = _roundtrip(s)  # npy16 is the default
    np.testing.assert_allclose(out.depth, s.depth, rtol=2.0**-11)
    assert out.depth.dtype == np.float32


def test_png16_roundtrip_exact_on_grid_and_not_clipped_to_8_bits():
    scale = 1e-3
    counts = np.random.default_rng(1).integers(1, 65535, (12, 16))
    counts[0, 0] = 65535
    depth = (counts * scale).astype(np.float32)  # up to 65.535 m, far above 255 counts
    s = make_sample("p16", _sample().image, depth, META)
    raw = encode_sample(s, depth_format="png16", png_scale=scale)
    assert json.loads(raw["json"])["depth_png_scale"] == scale
    stored = np.array(Image.open(io.BytesIO(raw["depth.png"])))
    assert stored.dtype == np.uint16 and stored.max() == 65535
    out = decode_sample(raw)
    np.testing.assert_array_equal(out.depth, depth)


def test_png16_auto_scale_within_half_a_step():
    s = _sample()
    raw = encode_sample(s, depth_format="png16")
    scale = json.loads(raw["json"])["depth_png_scale"]
    assert scale == auto_png_scale(float(s.depth.max())) == 2e-3  # 80 m / 65535 -> 2 mm
    np.testing.assert_allclose(decode_sample(raw).depth, s.depth, atol=scale / 2 + 1e-6)


def test_jpg_image_is_close():
    s = _sample(h=32, w=32)
    s.image[:] = 128
    out = _roundtrip(s)
    assert np.abs(out.image.astype(int) - s.image).max() <= 2


def _exif_rotated() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees on display
    return exif.tobytes()


@pytest.mark.parametrize(
    "mode, save_kw",
    [
        ("RGB", {}),
        ("RGB", {"subsampling": 0, "progressive": True}),
        ("RGB", {"exif": _exif_rotated()}),
        ("L", {}),
        ("CMYK", {}),
    ],
)
def test_jpg_decodes_exactly_like_pillow(mode, save_kw):
    """The OpenCV JPEG path gives Pillow's pixels: RGB order, no EXIF rotation, CMYK via Pillow."""
    rng = np.random.default_rng(3)
    small = Image.fromarray(rng.integers(0, 256, (10, 14, 3), dtype=np.uint8))
    buf = io.BytesIO()
    small.resize((56, 40), Image.BILINEAR).convert(mode).save(buf, format="JPEG", quality=90, **save_kw)
    raw = encode_sample(_sample(h=40, w=56)) | {"jpg": buf.getvalue()}
    with Image.open(io.BytesIO(buf.getvalue())) as img:
        expected = np.array(img.convert("RGB"))
    assert np.array_equal(decode_sample(raw).image, expected)


def test_truncated_jpg_raises():
    raw = encode_sample(_sample(key="k3", h=64, w=64))
    with pytest.raises(SampleError, match="^k3: .*cannot decode 'jpg'"):
        decode_sample(_corrupt(raw, "jpg", raw["jpg"][: len(raw["jpg"]) // 2]))


@pytest.mark.parametrize("fmt", DEPTH_FORMATS)
def test_invalid_pixels_stored_as_zero(fmt):
    depth = _sample().depth.copy()
    bad = [(0, 0), (1, 1), (2, 2), (3, 3), (4, 4)]
    for (r, c), v in zip(bad, [np.nan, np.inf, -np.inf, -1.0, 0.0]):
        depth[r, c] = v
    s = make_sample("inv", _sample().image, depth, META)
    out = _roundtrip(s, depth_format=fmt)
    for r, c in bad:
        assert out.depth[r, c] == 0 and not out.valid[r, c]
    assert out.valid.sum() == depth.size - len(bad)


def test_mask_only_when_it_excludes_positive_depth_and_alpha_roundtrip():
    plain = encode_sample(_sample())
    assert "mask.png" not in plain and "alpha.png" not in plain
    mask = np.ones((12, 16), bool)
    mask[5, 5:9] = False
    alpha = np.linspace(0, 1, 12 * 16, dtype=np.float32).reshape(12, 16)
    s = _sample(mask=mask, alpha=alpha)
    raw = encode_sample(s)
    assert "mask.png" in raw and "alpha.png" in raw
    out = decode_sample(raw)
    np.testing.assert_array_equal(out.valid, mask)
    assert out.depth[5, 5] > 0  # masked-out pixels keep their depth; `valid` is the authority
    np.testing.assert_allclose(out.alpha, alpha, atol=0.5 / 255 + 1e-7)


# ----------------------------------------------------------------------------- errors


def test_float16_overflow_and_png16_overflow_are_refused():
    depth = np.full((4, 4), 70000.0, np.float32)
    s = make_sample("far", np.zeros((4, 4, 3), np.uint8), depth, META)
    with pytest.raises(SampleError, match="far: .*float16"):
        encode_sample(s)
    with pytest.raises(SampleError, match="far: .*16 bits"):
        encode_sample(s, depth_format="png16", png_scale=1e-3)
    assert decode_sample(encode_sample(s, depth_format="npy32")).depth.max() == 70000.0


def test_tiny_depth_warns_in_float16_but_stays_valid():
    depth = np.full((4, 4), 1e-6, np.float32)
    s = make_sample("tiny", np.zeros((4, 4, 3), np.uint8), depth, META)
    with pytest.warns(UserWarning, match="float16 precision"):
        out = decode_sample(encode_sample(s))
    assert out.valid.all()


def test_bad_samples_are_refused_on_encode():
    s = _sample(key="has.dot")
    with pytest.raises(SampleError, match="has.dot: key"):
        encode_sample(s)
    s = _sample()
    s.depth = s.depth[:-1]
    with pytest.raises(SampleError, match="s0: depth must be"):
        encode_sample(s)


def test_meta_validation():
    with pytest.raises(ValueError, match="depth_kind"):
        SampleMeta("d", None, metric=True, synthetic=False, depth_kind="disparity")
    with pytest.raises(ValueError, match="f_px"):
        SampleMeta("d", -1.0, metric=True, synthetic=False)
    meta = SampleMeta("d", None, metric=False, synthetic=False, sparse=True, depth_kind="disparity")
    assert SampleMeta.from_json(json.loads(json.dumps(meta.to_json()))) == meta


def _corrupt(raw: dict, member: str, value) -> dict:
    out = dict(raw)
    if value is None:
        del out[member]
    else:
        out[member] = value
    return out


@pytest.mark.parametrize(
    "member, make_value, reason",
    [
        ("jpg", lambda raw: raw["jpg"][:50], "cannot decode 'jpg'"),
        ("jpg", lambda raw: b"not an image", "cannot decode 'jpg'"),
        ("depth.npy", lambda raw: b"\x93NUMPY garbage", "cannot decode 'depth.npy'"),
        ("depth.npy", lambda raw: encode_sample(_sample(h=10))["depth.npy"], "depth shape"),
        ("depth.npy", None, "missing member 'depth.npy'"),
        ("json", b"{not json", "cannot decode 'json'"),
        ("json", None, "missing member 'json'"),
    ],
)
def test_corrupt_members_raise_sample_error_naming_the_key(member, make_value, reason):
    raw = encode_sample(_sample(key="k7"))
    value = make_value(raw) if callable(make_value) else make_value
    with pytest.raises(SampleError, match=f"^k7: .*{reason}"):
        decode_sample(_corrupt(raw, member, value))


@pytest.mark.parametrize("field", ["f_px", "metric", "dataset", "depth_format", "width"])
def test_missing_json_field_raises(field):
    raw = encode_sample(_sample(key="k8"))
    info = json.loads(raw["json"])
    del info[field]
    with pytest.raises(SampleError, match=f"^k8: json is missing field.*{field}"):
        decode_sample(_corrupt(raw, "json", json.dumps(info).encode()))


def test_non_finite_or_negative_stored_depth_raises():
    raw = encode_sample(_sample(key="k9"), depth_format="npy32")
    for bad in (np.nan, -1.0):
        depth = np.load(io.BytesIO(raw["depth.npy"]))
        depth[0, 0] = bad
        buf = io.BytesIO()
        np.save(buf, depth)
        with pytest.raises(SampleError, match="^k9: depth has"):
            decode_sample(_corrupt(raw, "depth.npy", buf.getvalue()))


# ----------------------------------------------------------------------------- shard writer


def _read_back(urls: list[str]) -> list[Sample]:
    """Plain webdataset tar iteration (no decoders), then decode_sample."""
    return [decode_sample(raw) for raw in wds.WebDataset(urls, shardshuffle=False)]


def test_shard_writer_splits_and_index_matches_tars(tmp_path: Path):
    samples = [_sample(key=f"s{i}", seed=i) for i in range(7)]
    with ShardWriter(tmp_path, "toy", max_samples=3) as writer:
        for s in samples:
            writer.write(s)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["toy-000000.tar", "toy-000001.tar", "toy-000002.tar", "toy.index.json"]
    index = read_index(tmp_path / "toy.index.json")
    assert [s["samples"] for s in index["shards"]] == [3, 3, 1]
    assert index["samples"] == 7 and index["complete"] is True
    assert index["url_pattern"] == "toy-{000000..000002}.tar"
    urls = shard_urls(tmp_path / "toy.index.json")
    for url, entry in zip(urls, index["shards"]):
        assert len(_read_back([url])) == entry["samples"]
    back = _read_back(urls)
    assert [s.key for s in back] == [s.key for s in samples]
    np.testing.assert_allclose(back[6].depth, samples[6].depth, rtol=2.0**-11)


def test_shard_writer_splits_at_max_bytes(tmp_path: Path):
    with ShardWriter(tmp_path, "b", max_bytes=1) as writer:
        for i in range(3):
            writer.write(_sample(key=f"s{i}"))
    assert [s["samples"] for s in read_index(tmp_path / "b.index.json")["shards"]] == [1, 1, 1]


def test_shard_writer_is_deterministic_and_refuses_duplicate_keys(tmp_path: Path):
    for name in ("a", "b"):
        with ShardWriter(tmp_path, name) as writer:
            writer.write(_sample())
            with pytest.raises(ValueError, match="duplicate"):
                writer.write(_sample())
    assert (tmp_path / "a-000000.tar").read_bytes() == (tmp_path / "b-000000.tar").read_bytes()


def test_exception_keeps_complete_shards_only(tmp_path: Path):
    with pytest.raises(RuntimeError, match="boom"):
        with ShardWriter(tmp_path, "x", max_samples=2) as writer:
            for i in range(3):
                writer.write(_sample(key=f"s{i}", seed=i))
            raise RuntimeError("boom")
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["x-000000.tar", "x.index.json"]
    with pytest.warns(UserWarning, match="interrupted"):
        index = read_index(tmp_path / "x.index.json")
    assert index["complete"] is False and index["samples"] == 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert len(_read_back(shard_urls(tmp_path / "x.index.json"))) == 2


def test_read_index_errors_name_the_file(tmp_path: Path):
    missing = tmp_path / "nope.index.json"
    with pytest.raises(ShardIndexError, match="nope.index.json: cannot read"):
        read_index(missing)
    bad = tmp_path / "bad.index.json"
    bad.write_text("{")
    with pytest.raises(ShardIndexError, match="bad.index.json: .*not valid JSON"):
        read_index(bad)
    with ShardWriter(tmp_path, "ok") as writer:
        writer.write(_sample())
    path = tmp_path / "ok.index.json"
    index = json.loads(path.read_text())
    index["samples"] = 5
    path.write_text(json.dumps(index))
    with pytest.raises(ShardIndexError, match="ok.index.json: .*shards hold 1"):
        read_index(path)
    (tmp_path / "ok-000000.tar").unlink()
    with pytest.raises(ShardIndexError, match="ok-000000.tar not found"):
        read_index(path)
