"""Dense-prediction (semantic segmentation) models, one file per family."""
# Add one line per family file.
from canon.models.segmentation import unet  # noqa: F401
from canon.models.segmentation import fcn  # noqa: F401
from canon.models.segmentation import deeplab  # noqa: F401
