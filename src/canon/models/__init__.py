"""Every model family; importing this package registers them all."""
from canon.models import classification, detection, generative, reading, segmentation, sequence  # noqa: F401
