"""Image classifiers, one file per family. Each import registers that family's names."""
# Add one line per family file, in the canon's order.
from canon.models.classification import lenet  # noqa: F401  (1998)
from canon.models.classification import alexnet  # noqa: F401  (2012)
from canon.models.classification import vgg  # noqa: F401  (2014)
from canon.models.classification import googlenet  # noqa: F401  (2014)
from canon.models.classification import resnet  # noqa: F401  (2015)
from canon.models.classification import resnet_cifar  # noqa: F401  (2015, CIFAR-10 section)
from canon.models.classification import densenet  # noqa: F401  (2016)
from canon.models.classification import mobilenet  # noqa: F401  (2017, 2018)
from canon.models.classification import vit  # noqa: F401  (2020)
from canon.models.classification import deit  # noqa: F401  (2020)
