"""Sequence models (recurrent encoder-decoders, the Transformer), one file per family."""
# Add one line per family file.
