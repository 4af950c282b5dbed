"""Reading-comprehension (extractive question answering) models, one file per model."""
# Add one line per model file.
from canon.models.reading import bidaf  # noqa: F401  (2016)
from canon.models.reading import rnet  # noqa: F401  (2017)
from canon.models.reading import fusionnet  # noqa: F401  (2017)
from canon.models.reading import qanet  # noqa: F401  (2018)
