"""The shard format: one training sample <-> a webdataset record, the shard writer and the index.

Below both its writers (dp_train.convert, dp_train.synth) and its readers (dp_train.data).

A sample inside a tar shard is the group of members sharing a key (see shards/README.md):

    KEY.jpg or KEY.png   8-bit RGB image
    KEY.depth.npy        HxW float16 (depth_format "npy16") or float32 ("npy32") depth
    KEY.depth.png        HxW uint16 ("png16"); depth = value * json["depth_png_scale"]
                         (no depth member when json["depth_kind"] is "none": a sample written without
                         depth, e.g. a focal-only photo or a matte, decodes with an all-invalid depth map)
    KEY.mask.png         optional 8-bit, 0 = excluded; only when validity is not implied by depth
    KEY.alpha.png        optional 8-bit matting alpha; alpha = value / 255
    KEY.json             metadata: SampleMeta fields, schema_version, depth_format, width, height

Invalid depth pixels (non-finite, <= 0, sky) are stored as 0. Never decode these shards
with webdataset's image decoders: they clip 16-bit PNGs to 8 bits. Use `decode_sample`.
"""

from dp_train.shards.decode import decode_sample, load_png16
from dp_train.shards.encode import auto_png_scale, encode_sample, quantize_png16, to_float16
from dp_train.shards.index import ShardIndexError, read_index, shard_counts, shard_urls
from dp_train.shards.sample import (DEPTH_FORMATS, DEPTH_KINDS, IMAGE_FORMATS, SCHEMA_VERSION, Sample, SampleError,
                                    SampleMeta, make_sample, sanitize_key)
from dp_train.shards.writer import ShardWriter, write_text_atomic

__all__ = ["DEPTH_FORMATS", "DEPTH_KINDS", "IMAGE_FORMATS", "SCHEMA_VERSION", "Sample", "SampleError", "SampleMeta",
           "ShardIndexError", "ShardWriter", "auto_png_scale", "decode_sample", "encode_sample", "load_png16",
           "make_sample", "quantize_png16", "read_index", "sanitize_key", "shard_counts", "shard_urls", "to_float16",
           "write_text_atomic"]
