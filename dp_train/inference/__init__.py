"""Getting a trained network out: `predict` (metric depth for images) and `export` (Apple's layout)."""
