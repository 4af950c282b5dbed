"""Reading-comprehension (extractive question answering) models, one file per model."""
# Add one line per model file.
