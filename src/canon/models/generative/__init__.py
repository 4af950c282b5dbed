"""Generative models, one file per family. Each import registers that family's names."""
# Add one line per family file.
