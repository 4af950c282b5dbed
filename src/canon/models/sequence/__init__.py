"""Sequence models (recurrent encoder-decoders, the Transformer), one file per family."""
# Add one line per family file.
from canon.models.sequence import rnn_seq2seq  # noqa: F401  (2015)
from canon.models.sequence import transformer  # noqa: F401  (2017)
