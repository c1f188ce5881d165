"""Imports every family file so its models register. Add a family here (sorted)."""
from . import (efficientnet, efficientnet_lite, lraspp, mnasnet, mobilenet_v1,  # noqa: F401
               mobilenet_v2, mobilenet_v3)
