#!/usr/bin/env python
"""Convert a public depth benchmark into shards: `python -m dp_train convert FORMAT` under its old name
(dp_train/convert/public.py; formats and layouts: docs/convert.md)."""

import sys

from dp_train.convert.public import main

if __name__ == "__main__":
    sys.exit(main())
