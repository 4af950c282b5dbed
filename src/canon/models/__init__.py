"""Every model family; importing this package registers them all."""
from canon.models import classification, segmentation  # noqa: F401
