"""Small helpers used across packages: value ranges, colour maps for depth, EXIF focal lengths, and the parser and
error reporting of the standalone commands (make_shards, convert, synth)."""
