"""PNG plots of a results dict: one panel per (op, dtype, layout, mode, shape group).

- bandwidth sweep: GB/s against bytes moved, one line per provider, with the copy bandwidth
  measured in the same run as a dashed ceiling;
- layer shapes: speed-up over eager per shape, grouped bars per provider (1.0 = eager).

At most PANELS_PER_FILE panels per file: name.png, name-2.png, ...
"""
from __future__ import annotations

from pathlib import Path

PANELS_PER_FILE = 8
_ORDER = ("eager", "compile", "compile-max-autotune", "fastblocks:triton", "fastblocks:cuda",
          "fastblocks:cpu", "fastblocks:auto", "fastblocks:torch")


def _groups(rows):
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if not r.get("median_us"):
            continue
        kind = "sweep" if r["shape_set"] == "sweep" else f"{r['shape_set']}, batch {r['batch']}"
        groups.setdefault((r["op"], r["dtype"], r["layout"], r["mode"], kind), []).append(r)
    return groups


def _colors(providers):
    import matplotlib.pyplot as plt
    cmap = plt.get_cmap("tab10")
    known = [p for p in _ORDER if p in providers] + sorted(p for p in providers if p not in _ORDER)
    return {p: cmap(i % 10) for i, p in enumerate(known)}, known


def plot_results(results: dict, path: str | Path) -> list[Path]:
    """Write the plots; the paths written (none when there is nothing to plot)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    groups = _groups(results["rows"])
    if not groups:
        return []
    providers = {r["provider"] for rs in groups.values() for r in rs}
    colors, order = _colors(providers)
    copy_gbps = results["device"].get("copy_bandwidth_gbps")
    dev = results["device"]
    commit = (results.get("git") or {}).get("commit", "unknown")[:10]
    threads = dev.get("threads")
    title = (f"fastblocks bench on {dev['name']} ({threads} thread{'s' if threads != 1 else ''})"
             if dev["type"] == "cpu" else f"fastblocks bench on {dev['name']}")
    title += f" — commit {commit}, {results.get('created', '')[:10]}"

    items = list(groups.items())
    written = []
    for start in range(0, len(items), PANELS_PER_FILE):
        chunk = items[start:start + PANELS_PER_FILE]
        n_shapes = max(len({r["shape"] for r in rs}) for _, rs in chunk)
        width = min(max(9.0, 0.55 * n_shapes * max(1, len(order) - 1) * 0.5 + 3), 30.0)
        fig, axes = plt.subplots(len(chunk), 1, figsize=(width, 3.6 * len(chunk)), squeeze=False)
        for ax, ((op, dtype, layout, mode, kind), rs) in zip(axes[:, 0], chunk):
            label = f"{op}  {dtype}  {layout}  {mode}  [{kind}]"
            if kind == "sweep":
                _sweep_panel(ax, rs, colors, order, copy_gbps)
            else:
                _bars_panel(ax, rs, colors, order)
            ax.set_title(label, fontsize=10, loc="left")
        fig.suptitle(title, fontsize=11)
        fig.tight_layout(rect=(0, 0, 1, 0.97))
        out = path if start == 0 else path.with_name(f"{path.stem}-{start // PANELS_PER_FILE + 1}{path.suffix}")
        fig.savefig(out, dpi=110)
        plt.close(fig)
        written.append(out)
    return written


def _sweep_panel(ax, rows, colors, order, copy_gbps):
    for p in order:
        pts = sorted((r["bytes"], r["gbps"]) for r in rows if r["provider"] == p and r.get("gbps"))
        if pts:
            xs, ys = zip(*pts)
            ax.plot([x / 2 ** 20 for x in xs], ys, marker="o", ms=3.5, label=p, color=colors[p])
    if copy_gbps:
        ax.axhline(copy_gbps, ls="--", color="black", lw=1)
        ax.annotate(f"copy {copy_gbps:.0f} GB/s", (0.01, copy_gbps), xycoords=("axes fraction", "data"),
                    textcoords="offset points", xytext=(0, 3), fontsize=8)
    ax.set_xscale("log", base=2)
    from matplotlib.ticker import FuncFormatter
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.set_xlabel("MiB moved (inputs read + outputs written)")
    ax.set_ylabel("GB/s")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    _mark_mismatches(ax, [(r["bytes"] / 2 ** 20, r["gbps"]) for r in rows
                          if r.get("gbps") and r.get("parity_ok") is False])
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _bars_panel(ax, rows, colors, order):
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    short = {r["shape"]: r.get("shape_short") or r["shape"] for r in rows}
    provs = [p for p in order if p != "eager" and any(r["provider"] == p for r in rows)]
    if not provs:
        provs = ["eager"]
    width = 0.8 / len(provs)
    bad = []
    for j, p in enumerate(provs):
        vals = {r["shape"]: r for r in rows if r["provider"] == p}
        xs = [i + (j - (len(provs) - 1) / 2) * width for i in range(len(shapes))]
        ys = [(vals[s].get("speedup_vs_eager") or 0.0) if s in vals else 0.0 for s in shapes]
        ax.bar(xs, ys, width=width, label=p, color=colors[p])
        bad += [(x, y) for x, y, s in zip(xs, ys, shapes) if s in vals and vals[s].get("parity_ok") is False]
    _mark_mismatches(ax, bad)
    ax.axhline(1.0, color="black", lw=1)
    ax.set_xticks(range(len(shapes)))
    ax.set_xticklabels([short[s] for s in shapes], rotation=35 if len(shapes) > 6 else 0,
                       ha="right" if len(shapes) > 6 else "center", fontsize=8)
    ax.set_ylabel("speed-up over eager (x)")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))


def _mark_mismatches(ax, points):
    """A red cross over results whose output did not match eager: fast but wrong."""
    if points:
        xs, ys = zip(*points)
        ax.scatter(xs, ys, marker="x", color="red", s=40, zorder=5, label="output != eager")
