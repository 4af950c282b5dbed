"""Object detectors, one file per family. Each import registers that family's names."""
# Add one line per family file.
from canon.models.detection import yolo  # noqa: F401
from canon.models.detection import faster_rcnn  # noqa: F401
from canon.models.detection import ssd  # noqa: F401
from canon.models.detection import retinanet  # noqa: F401
from canon.models.detection import rcnn, sppnet, fast_rcnn, faster_rcnn_vgg  # noqa: F401  (the R-CNN lineage)
