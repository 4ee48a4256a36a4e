"""Dataset conversion: depth datasets as files on disk -> dp_train webdataset shards.

The commands `python -m dp_train make_shards` (`make_shards`: an in-house folder of images, depth maps, masks and
focal lengths; its jobs in `jobs`) and `python -m dp_train convert` (`public`; `formats` and the reader modules: the
public benchmarks); tools/make_shards.py and tools/convert/convert_public.py are their old names. Both share `errors`, `readers` (file readers), `report` and `runner` (parallel run, writing).
Not imported at training time: what training reads (the shard schema, streaming, augmentation) is
`dp_train.data`, whose schema this package writes.
"""
