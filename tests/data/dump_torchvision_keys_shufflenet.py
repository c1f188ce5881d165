"""Write torchvision's ShuffleNetV2 state_dict keys and shapes to
tests/data/torchvision_keys/shufflenet_v2_*.json.

fastblocks' shufflenet_v2_* must load torchvision's checkpoints with ``load_state_dict`` as
they are; these lists are the facts tests/test_models_efficient_b.py checks that against, kept
as data because torchvision does not import beside the CPU torch that CI uses. Regenerate them
in a virtualenv with a working torchvision (generated with torch 2.14.1 + torchvision 0.29.1)::

    python -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/tv/bin/python tests/data/dump_torchvision_keys_shufflenet.py

Same file format as tests/data/dump_torchvision_keys.py (the other zoo helper's, for the
MobileNet/EfficientNet lists): {"source", "num_parameters", "state_dict": [[key, shape], ...]},
every state_dict entry (parameters and buffers) in order, one a line.
"""
from __future__ import annotations

import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parent / "torchvision_keys"
NAMES = ("shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0")


def dump(name: str) -> pathlib.Path:
    import torch
    import torchvision
    from torchvision import models

    model = getattr(models, name)(weights=None)
    state = model.state_dict()
    record = {
        "source": f"torchvision {torchvision.__version__} (torch {torch.__version__}), "
                  f"torchvision.models.{name}()",
        "num_parameters": sum(p.numel() for p in model.parameters()),
    }
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{name}.json"
    rows = ",\n".join(json.dumps([k, list(v.shape)]) for k, v in state.items())
    head = json.dumps(record, indent=1)[:-2]
    path.write_text(f'{head},\n "state_dict": [\n{rows}\n]}}\n')
    return path


if __name__ == "__main__":
    for n in sys.argv[1:] or NAMES:
        print(dump(n))
