"""Training data as read at run time: the webdataset shard schema (`schema`), streaming, augmentation and
the datamodule (conversion into shards is `dp_train.convert`)."""
