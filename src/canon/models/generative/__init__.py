"""generative models (not yet written)."""
