"""Generate the backend order `auto` tries on CUDA tensors (fastblocks/_auto_order.json) from
the committed GPU benchmark results, so the order is a measurement, never a hand edit.

    python bench/auto_order.py            # rewrite fastblocks/_auto_order.json
    python bench/auto_order.py --check    # exit 1 if the committed file is not what the
                                          # results give (the test suite runs this)

Input: every bench/results/<device>/*.json whose device type is "cuda". Per op family (the
op -> family map of fastblocks.bench.cases.REGISTRY), each kernel backend (fastblocks:triton,
fastblocks:cuda) is scored on the cases where every kernel backend has a timed row: the
geometric mean over those cases of its time over the fastest kernel backend's time (1.0 =
fastest everywhere). Lower score first. A backend with any parity mismatch in the family goes
last, whatever its speed: `auto` must never prefer a wrong kernel. The same score per shape
class (dtype, layout, mode) is written beside it, with the classes whose winner differs from
the family's, for the day `auto` resolves per shape class. Families without GPU rows, and
everything while no GPU result exists, keep PRIOR (Triton first: a prior, not a measurement),
except the families of PRIOR_FAMILIES, and the file says so.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "fastblocks" / "_auto_order.json"
PRIOR = ("triton", "cuda")
# Unmeasured families whose prior is not PRIOR. conv_bn_act: its triton backend computes the
# convolution itself (kernels/conv_gemm.py, an implicit GEMM that no GPU has run yet), its cuda
# backend takes cuDNN's convolution and fuses only bias + activation into one pass of ours, so
# it can lose to eager by at most that pass while an untuned GEMM can lose by any factor;
# until a GPU run ranks them, `auto` takes cuDNN's convolution.
PRIOR_FAMILIES = {"conv_bn_act": ("cuda", "triton")}
KERNEL_PROVIDERS = {"fastblocks:triton": "triton", "fastblocks:cuda": "cuda"}


def _family_of(op: str) -> str:
    try:
        from fastblocks.bench.cases import REGISTRY
        return REGISTRY[op].family if op in REGISTRY else op
    except Exception:  # noqa: BLE001 - a results file may name an op this checkout lacks
        return op


def _case_key(row: dict) -> tuple:
    return (row.get("op"), row.get("shape_set"), row.get("shape"), row.get("batch"),
            row.get("dtype"), row.get("layout"), row.get("mode"))


def _score(cases: dict[tuple, dict[str, float]], backends: list[str]) -> dict[str, float]:
    """Geomean of time / fastest over the cases every backend ran."""
    logs = defaultdict(list)
    for times in cases.values():
        if not all(b in times for b in backends):
            continue
        best = min(times[b] for b in backends)
        for b in backends:
            logs[b].append(math.log(times[b] / best))
    return {b: round(math.exp(sum(v) / len(v)), 4) for b, v in logs.items() if v}


def generate(results: Path) -> dict:
    files, times, bad = [], defaultdict(dict), defaultdict(set)  # times[(family, case)][backend]
    for path in sorted(results.glob("*/*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(data, dict) or data.get("device", {}).get("type") != "cuda":
            continue
        files.append(str(path.relative_to(results)))
        for row in data.get("rows", []):
            backend = KERNEL_PROVIDERS.get(row.get("provider"))
            if backend is None:
                continue
            family = _family_of(row.get("op"))
            if row.get("parity_ok") is False:
                bad[family].add(backend)
            elif row.get("median_us"):
                times[(family, _case_key(row))][backend] = float(row["median_us"])
    out = {
        "_generated_by": "bench/auto_order.py from bench/results/*/*.json (cuda devices); "
                         "do not edit by hand",
        "source": "measured" if files else "prior",
        "note": ("" if files else "no GPU results are committed: every family uses the prior "
                 "order (triton first; the families listed here their own prior, with why), "
                 "which is not a measurement"),
        "default": list(PRIOR),
        "results": files,
        "families": {},
    }
    for fam, order in PRIOR_FAMILIES.items():  # overwritten below once measured
        out["families"][fam] = {"order": list(order), "source": "prior",
                                "why": "bench/auto_order.py PRIOR_FAMILIES"}
    families = sorted({f for f, _ in times} | set(bad))
    for fam in families:
        cases = {k: v for (f, k), v in times.items() if f == fam}
        measured = sorted({b for v in cases.values() for b in v})
        score = _score(cases, measured) if len(measured) > 1 else {b: 1.0 for b in measured}
        order = sorted(score, key=lambda b: (b in bad[fam], score[b]))
        prior = PRIOR_FAMILIES.get(fam, PRIOR)
        order += [b for b in prior if b not in order]  # unmeasured backends: prior order, last
        order.sort(key=lambda b: b in bad[fam])  # stable: mismatching backends last
        classes = {}
        for cls in sorted({(k[4], k[5], k[6]) for k in cases}, key=str):
            sub = {k: v for k, v in cases.items() if (k[4], k[5], k[6]) == cls}
            s = _score(sub, measured)
            if s:
                classes["/".join(map(str, cls))] = {"score": s, "best": min(s, key=s.get)}
        out["families"][fam] = {
            "order": order,
            "score_vs_fastest": score,
            "cases": sum(all(b in v for b in measured) for v in cases.values()),
            "parity_mismatch": sorted(bad[fam]),
            "classes": classes,
            "classes_differing": sorted(c for c, v in classes.items() if v["best"] != order[0]),
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--results", type=Path, default=ROOT / "bench" / "results")
    p.add_argument("--out", type=Path, default=DATA)
    p.add_argument("--check", action="store_true", help="exit 1 if --out differs from the results")
    args = p.parse_args(argv)
    text = json.dumps(generate(args.results), indent=1, sort_keys=True) + "\n"
    if args.check:
        current = args.out.read_text() if args.out.is_file() else ""
        if current != text:
            print(f"{args.out} is stale: run python bench/auto_order.py", file=sys.stderr)
            return 1
        return 0
    args.out.write_text(text)
    data = json.loads(text)
    print(f"{args.out}: {data['source']}" + (f" ({data['note']})" if data["note"] else ""))
    for fam, v in data["families"].items():
        if v.get("source") == "prior":
            print(f"  {fam}: {' > '.join(v['order'])}  (prior: {v['why']})")
            continue
        print(f"  {fam}: {' > '.join(v['order'])}  score {v['score_vs_fastest']}  "
              f"({v['cases']} cases; classes preferring another: {v['classes_differing'] or 'none'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
