"""Small helpers used across packages: value ranges, colour maps for depth, EXIF focal lengths."""
