"""The backend order `auto` tries on CUDA tensors, per op family, as measured: read from
_auto_order.json, which bench/auto_order.py generates from the committed GPU benchmark results
(bench/results/<device>/*.json). With no GPU results the file holds the prior (triton, then
cuda) and says so in its "source" and "note" fields."""
from __future__ import annotations

import json
from pathlib import Path

DATA = Path(__file__).with_name("_auto_order.json")
PRIOR = ("triton", "cuda")


def load(path: Path = DATA) -> tuple[tuple[str, ...], dict[str, tuple[str, ...]], str]:
    """(default order, {family: order}, source) — source is "measured" or "prior". A missing
    or unreadable file gives the prior (fastblocks must import without it)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return PRIOR, {}, "prior"
    default = tuple(data.get("default", PRIOR))
    families = {fam: tuple(v["order"]) for fam, v in data.get("families", {}).items()}
    return default, families, data.get("source", "prior")
