"""Generative models, one file per family. Each import registers that family's names."""
# Add one line per family file.
from canon.models.generative import gan  # noqa: F401
from canon.models.generative import dcgan  # noqa: F401
from canon.models.generative import wgan  # noqa: F401
from canon.models.generative import lapgan  # noqa: F401
from canon.models.generative import cyclegan  # noqa: F401
from canon.models.generative import pixelcnn  # noqa: F401
from canon.models.generative import pixelrnn  # noqa: F401
from canon.models.generative import vae  # noqa: F401
