#!/usr/bin/env python
"""Convert a folder of images + depth maps into shards: `python -m dp_train make_shards` under its old name
(dp_train/convert/make_shards.py; shards/README.md)."""

import sys

from dp_train.convert.make_shards import main

if __name__ == "__main__":
    sys.exit(main())
