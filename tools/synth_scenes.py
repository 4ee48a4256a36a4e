#!/usr/bin/env python
"""Render procedural scenes into shards: `python -m dp_train synth` under its old name (dp_train/synth/command.py)."""

import sys

from dp_train.synth.command import main

if __name__ == "__main__":
    sys.exit(main())
