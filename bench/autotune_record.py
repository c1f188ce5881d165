"""What the Triton autotuner chose on a GPU: the JSON lines that kernels/_autotune.py appends
while FASTBLOCKS_AUTOTUNE_LOG is set (one per tuning: kernel, key, chosen config, the prior,
each config's median time) summed up per kernel and key into one JSON file of the results.

    python bench/autotune_record.py LOG.jsonl OUT.json

bench/gpu_session.sh runs it after each stage that tunes (quick, sweeps). Standard library
only (no torch import), so it costs nothing of a stage's budget. An absent or empty log gives
a record with no tunings (e.g. Triton never ran), never an error.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

SCHEMA = "fastblocks-autotune/1"


def summarize(lines: list[dict]) -> dict:
    """{schema, tunings, seconds, changed, kernels: {kernel: [{key, config, prior, changed,
    seconds, timings_ms}]}}; `changed`: the chosen config is not the prior."""
    kernels: dict[str, list[dict]] = {}
    seconds = 0.0
    for rec in lines:
        changed = rec["config"] != rec["prior"]
        seconds += rec.get("seconds") or 0.0
        kernels.setdefault(rec["kernel"], []).append(
            {"key": rec["key"], "config": rec["config"], "prior": rec["prior"],
             "changed": changed, "seconds": rec.get("seconds"),
             "timings_ms": rec.get("timings_ms")})
    return {"schema": SCHEMA, "tunings": len(lines), "seconds": round(seconds, 3),
            "changed": sum(e["changed"] for es in kernels.values() for e in es),
            "kernels": dict(sorted(kernels.items()))}


def read_log(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by the stage's timeout
                continue
    return out


def table(summary: dict) -> str:
    rows = [f"autotune: {summary['tunings']} tunings in {summary['seconds']} s of timing, "
            f"{summary['changed']} chose other than the prior"]
    for kernel, entries in summary["kernels"].items():
        for e in entries:
            cfg = ", ".join(f"{k}={v}" for k, v in e["config"].items())
            rows.append(f"  {kernel} key={e['key']}: {cfg}{'' if e['changed'] else ' (prior)'}")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    log, out = Path(argv[0]), Path(argv[1])
    summary = summarize(read_log(log))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=1) + "\n")
    print(table(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
