"""sequence models (not yet written)."""
