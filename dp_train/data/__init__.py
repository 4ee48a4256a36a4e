"""Training data: the webdataset shard schema (`schema`) and dataset conversion (`convert`)."""
