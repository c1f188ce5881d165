"""Write torchvision's state_dict keys and shapes to tests/data/torchvision_keys/<name>.json.

The zoo's models that torchvision also has must load its checkpoints with ``load_state_dict``
as they are; these lists are the facts the tests check that against, kept as data because
torchvision does not import beside the CPU torch that CI uses. Regenerate them in a virtualenv
with a working torchvision (here torch 2.14.1 + torchvision 0.29.1)::

    python -m venv /tmp/tv && /tmp/tv/bin/pip install torch==2.14.1 torchvision==0.29.1
    /tmp/tv/bin/python tests/data/dump_torchvision_keys.py mobilenet_v2 efficientnet_b0 ...

Each name is a builder of ``torchvision.models`` (or ``torchvision.models.segmentation`` for
``lraspp_*``/``deeplabv3_*``/``fcn_*``), built with random weights and its default arguments.
The file lists every state_dict entry (parameters and buffers) in order as [key, shape].
"""
from __future__ import annotations

import json
import pathlib
import sys

OUT = pathlib.Path(__file__).resolve().parent / "torchvision_keys"


def dump(name: str) -> pathlib.Path:
    import torch
    import torchvision
    from torchvision import models

    module = models.segmentation if name.startswith(("lraspp_", "deeplabv3_", "fcn_")) else models
    kwargs = {"weights": None}
    if module is models.segmentation:
        kwargs["weights_backbone"] = None
    model = getattr(module, name)(**kwargs)
    state = model.state_dict()
    record = {
        "source": f"torchvision {torchvision.__version__} (torch {torch.__version__}), "
                  f"torchvision.models{'.segmentation' if module is not models else ''}.{name}()",
        "num_parameters": sum(p.numel() for p in model.parameters()),
        "state_dict": [[k, list(v.shape)] for k, v in state.items()],
    }
    OUT.mkdir(exist_ok=True)
    path = OUT / f"{name}.json"
    # one entry a line: small diffs when torchvision changes
    rows = ",\n".join(json.dumps(row) for row in record.pop("state_dict"))
    head = json.dumps(record, indent=1)[:-2]
    path.write_text(f'{head},\n "state_dict": [\n{rows}\n]}}\n')
    return path


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    for n in sys.argv[1:]:
        print(dump(n))
