"""Imports every family file so its models register. Add a family here (sorted)."""
from . import cifar_resnet, preact_resnet, resnet  # noqa: F401,E402
from . import classic, vgg  # noqa: F401,E402
from . import densenet, squeezenet  # noqa: F401,E402
from . import ibn_resnet, shake_shake, siamese  # noqa: F401,E402
from . import vit  # noqa: F401,E402
from . import googlenet  # noqa: F401,E402
from . import fractalnet  # noqa: F401,E402
