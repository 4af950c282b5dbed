"""Image classifiers, one file per family. Each import registers that family's names."""
# Add one line per family file, in the canon's order.
from canon.models.classification import resnet  # noqa: F401  (2015)
