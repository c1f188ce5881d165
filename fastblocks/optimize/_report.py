"""The report optimize() returns (and attaches to the model as ``model.fastblocks_report``):
what was swapped, by pattern and count, and what was left eager and why."""
from __future__ import annotations

from collections import Counter, defaultdict


class Report:
    """Swaps by pattern (with the module paths) and modules left eager by reason.

    ``swapped``: {pattern: [path, ...]}; ``kept``: {reason: [path, ...]}; ``notes``: lines
    about the optimize pass itself (e.g. blocks torch.fx could not trace). ``str(report)``
    prints a summary table; ``report.counts()`` gives {pattern: count}.
    """

    def __init__(self) -> None:
        self.swapped: dict[str, list[str]] = defaultdict(list)
        self.kept: dict[str, list[str]] = defaultdict(list)
        self.notes: list[str] = []

    def swap(self, pattern: str, path: str) -> None:
        self.swapped[pattern].append(path or "<model>")

    def move(self, path: str, old_suffix: str, new_suffix: str) -> None:
        """Re-file ``path`` from a pattern ending in ``old_suffix`` to the same pattern ending
        in ``new_suffix`` (a chain that gained an activation)."""
        for pattern, paths in list(self.swapped.items()):
            if pattern.endswith(old_suffix) and path in paths:
                paths.remove(path)
                if not paths:
                    del self.swapped[pattern]
                self.swap(pattern[: len(pattern) - len(old_suffix)] + new_suffix, path)
                return

    def unswap(self, pattern: str, path: str) -> None:
        """Withdraw one swap of ``pattern`` at ``path`` (a later rule fused it into another)."""
        paths = self.swapped.get(pattern, [])
        if path in paths:
            paths.remove(path)
        if not paths:
            self.swapped.pop(pattern, None)

    def keep(self, reason: str, path: str) -> None:
        self.kept[reason].append(path or "<model>")

    def note(self, line: str) -> None:
        if line not in self.notes:
            self.notes.append(line)

    def counts(self) -> dict[str, int]:
        return {p: len(v) for p, v in self.swapped.items()}

    def __str__(self) -> str:
        lines = ["fastblocks.optimize report", "swapped:"]
        if not self.swapped:
            lines.append("  (nothing)")
        for pattern, paths in sorted(self.swapped.items()):
            lines.append(f"  {len(paths):4d}  {pattern}")
        if self.kept:
            lines.append("left eager:")
            for reason, paths in sorted(self.kept.items(), key=lambda kv: -len(kv[1])):
                example = paths[0] + (f", ... ({len(paths) - 1} more)" if len(paths) > 1 else "")
                lines.append(f"  {len(paths):4d}  {reason}  [{example}]")
        for line in self.notes:
            lines.append(f"note: {line}")
        return "\n".join(lines)

    __repr__ = __str__

    def merge_counts(self) -> Counter:
        return Counter(self.counts())
