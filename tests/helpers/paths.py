"""Where tests find the checkout and the reference fixtures beside it, wherever the test file sits."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
"""The root of this checkout."""
TOOLS = REPO / "tools"
"""The benchmark and research scripts some tests run."""
FIXTURES = REPO.parent / "shared" / "fixtures"
"""Apple reference outputs, shipped beside the checkout (never copied into it)."""
