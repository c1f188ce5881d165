"""Imports every family file so its models register. Add a family here (sorted)."""
from . import se_resnet, shufflenet_v1, shufflenet_v2, xception  # noqa: F401,E402  (zoo-b)
