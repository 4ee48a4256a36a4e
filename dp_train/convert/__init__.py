"""Dataset conversion: depth datasets as files on disk -> dp_train webdataset shards.

Run by tools/make_shards.py (`make_shards`: an in-house folder of images, depth maps, masks and focal
lengths; its jobs in `jobs`) and tools/convert/convert_public.py (`formats` and the reader modules: the public
benchmarks). Both share `errors`, `readers` (file readers), `report` and `runner` (parallel run, writing).
Not imported at training time: what training reads (the shard schema, streaming, augmentation) is
`dp_train.data`, whose schema this package writes.
"""
