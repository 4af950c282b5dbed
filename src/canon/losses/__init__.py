"""canon.losses: the canon's losses, a functional core plus thin ``nn.Module`` wrappers.

``canon.losses.functional`` holds the maths as small pure functions (shapes in each docstring);
the classes in ``canon.losses.modules`` hold only the options (and buffers such as class
weights) and call them. Shared conventions (reduction, empty inputs, ignore_index) are in the
functional module's docstring.
"""
from canon.losses import functional
from canon.losses.functional import *  # noqa: F401,F403
from canon.losses.functional import __all__ as _functional_all
from canon.losses.modules import *  # noqa: F401,F403
from canon.losses.modules import __all__ as _modules_all

from canon.losses import generative
from canon.losses.generative import *  # noqa: F401,F403
from canon.losses.generative import __all__ as _generative_all

__all__ = ["functional", "generative", *_functional_all, *_modules_all, *_generative_all]
