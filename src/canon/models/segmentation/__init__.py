"""Dense-prediction (semantic segmentation) models, one file per family."""
# Add one line per family file.
