"""detection models (not yet written)."""
