"""The data commands are subcommands of `python -m dp_train` (make_shards, convert, synth): listed in its help,
runnable, a bad argument is one `error:` line naming it (exit code 2, no traceback), and their old tools/ scripts
are wrappers that write the same bytes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from dp_train.cli.main import SUBCOMMANDS, main
from tests.helpers.cli import one_error_line, run_dp_train, run_tool
from tests.helpers.convert_fixtures import COLS, ROWS, write_middlebury

DATA_COMMANDS = ("make_shards", "convert", "synth")


def write_folder(root: Path, count: int = 2) -> Path:
    """`rgb/` PNGs and `depth/` float32 .npy maps in metres, matched by stem: what make_shards takes."""
    rng = np.random.default_rng(0)
    (root / "rgb").mkdir(parents=True)
    (root / "depth").mkdir()
    for i in range(count):
        Image.fromarray(rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)).save(root / "rgb" / f"s{i}.png")
        np.save(root / "depth" / f"s{i}.npy", rng.uniform(1, 10, (24, 32)).astype(np.float32))
    return root


def make_shards_args(folder: Path, out: Path) -> list[str]:
    """A make_shards command line for `write_folder`'s folder, one worker."""
    return ["--images", str(folder / "rgb"), "--depth", str(folder / "depth"), "--units", "m", "--f-px", "30",
            "--dataset", "d", "--out", str(out), "--workers", "1"]


def shard_bytes(out: Path) -> dict[str, bytes]:
    """{file name: bytes} of the shards written to `out`."""
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.tar"))}


def test_help_lists_every_data_command_with_its_line_and_the_description_names_them(tmp_path):
    done = run_dp_train("--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    description, listing = (" ".join(part.split()) for part in done.stdout.split("positional arguments"))
    for name in DATA_COMMANDS:
        assert name in description
        assert f"{name} {' '.join(SUBCOMMANDS[name][1].split())}" in listing


@pytest.mark.parametrize("name", DATA_COMMANDS)
def test_each_data_command_has_its_help(name, capsys):
    with pytest.raises(SystemExit) as stop:
        main([name, "--help"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: dp_train {name} ")


@pytest.mark.parametrize(("argv", "culprit"), [
    (["make_shards", "--images", "x", "--out", "o", "--dataset", "d", "--samples-per-shard", "many"],
     "argument --samples-per-shard: invalid int value: 'many'"),
    (["convert", "middlebury", "--root", "r", "--out", "o", "--depth-format", "npy8"],
     "argument --depth-format: invalid choice: 'npy8'"),
    (["convert", "tiff"], "argument FORMAT: invalid choice: 'tiff'"),
    (["synth", "--out", "o", "--count", "1", "--look", "photo"], "argument --look: invalid choice: 'photo'"),
    (["synth", "--out", "o", "--count", "1", "--colour"], "unrecognized arguments: --colour"),
])
def test_a_bad_argument_is_one_error_line_naming_it_with_exit_code_2(argv, culprit, capsys):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    assert one_error_line(capsys.readouterr().err).startswith(f"error: {culprit}")


def test_a_bad_input_is_one_error_line_with_exit_code_2(tmp_path, capsys):
    assert main(["convert", "sintel", "--root", str(tmp_path / "x"), "--out", str(tmp_path / "o")]) == 2
    assert one_error_line(capsys.readouterr().err) == f"error: --root {tmp_path / 'x'}: no such folder"


def test_make_shards_subcommand_and_its_tools_wrapper_write_the_same_shards(tmp_path):
    folder = write_folder(tmp_path / "in")
    assert main(["make_shards", *make_shards_args(folder, tmp_path / "sub")]) == 0
    done = run_tool("make_shards.py", *make_shards_args(folder, tmp_path / "tool"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert shard_bytes(tmp_path / "sub") and shard_bytes(tmp_path / "sub") == shard_bytes(tmp_path / "tool")


def test_convert_subcommand_and_its_tools_wrapper_write_the_same_shards(tmp_path):
    write_middlebury(tmp_path / "mb" / "Adirondack-perfect", 100.0, (10 + COLS + 2 * ROWS).astype(np.float32), 0)
    argv = ["middlebury", "--root", str(tmp_path / "mb"), "--workers", "1"]
    assert main(["convert", *argv, "--out", str(tmp_path / "sub")]) == 0
    done = run_tool("convert/convert_public.py", *argv, "--out", str(tmp_path / "tool"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert shard_bytes(tmp_path / "sub") and shard_bytes(tmp_path / "sub") == shard_bytes(tmp_path / "tool")


def test_a_wrapper_refuses_a_bad_argument_as_the_subcommand_does(tmp_path):
    done = run_tool("synth_scenes.py", "--out", "o", "--count", "zero", cwd=tmp_path)
    assert done.returncode == 2
    assert one_error_line(done.stderr) == ("error: argument --count: invalid int value: 'zero' "
                                           "(see `dp_train synth --help`)")
