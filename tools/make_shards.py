#!/usr/bin/env python
"""Convert a folder of images + depth maps into dp_train webdataset shards.

Example:
    python tools/make_shards.py --images data/rgb --depth data/depth --units mm \\
        --f-px 1450 --dataset indoor_v1 --out shards/indoor_v1

See `--help`, dp_train/convert/make_shards.py and shards/README.md.
"""

import sys

from dp_train.convert.make_shards import main

if __name__ == "__main__":
    sys.exit(main())
