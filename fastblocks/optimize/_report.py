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
        self._note_about: dict[str, int] = {}  # subject (a block's class name) -> its note

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

    def note(self, line: str, about: str | None = None, more: str | None = None) -> None:
        """Add the note ``line``, once. ``about`` names its subject (e.g. a block's class):
        when that subject has a note already, ``more`` (if given) is appended to it instead of
        a second note about the same block."""
        if about is not None and about in self._note_about:
            i = self._note_about[about]
            if more and more not in self.notes[i]:
                self.notes[i] += f"; {more}"
            return
        if line not in self.notes:
            self.notes.append(line)
            if about is not None:
                self._note_about[about] = len(self.notes) - 1

    def counts(self) -> dict[str, int]:
        return {p: len(v) for p, v in self.swapped.items()}

    def _split_nested(self) -> tuple[dict[str, int], dict[str, int]]:
        """({pattern: count} of swaps at the top, {pattern: count} of swaps inside another
        swapped block's path, e.g. an inverted residual's own conv -> BN runs)."""
        paths = {p for ps in self.swapped.values() for p in ps}

        def nested(path: str) -> bool:
            return any(path != q and (q == "<model>" or path.startswith(q + ".")) for q in paths)

        outer: dict[str, int] = {}
        inner: dict[str, int] = {}
        for pattern, ps in self.swapped.items():
            for p in ps:
                side = inner if nested(p) else outer
                side[pattern] = side.get(pattern, 0) + 1
        return outer, inner

    def summary(self) -> str:
        """One line, "10 inverted residual (...), 2 conv -> BN -> relu6; inside those: 17
        depthwise conv -> BN -> relu6, ..." (or "nothing"): the swaps at the top, then those
        nested inside another swapped block, so no swap looks counted twice."""
        outer, inner = self._split_nested()
        return summary_line(outer) + (f"; inside those: {summary_line(inner)}" if inner else "")

    def __str__(self) -> str:
        lines = ["fastblocks.optimize report", "swapped:"]
        if not self.swapped:
            lines.append("  (nothing)")
        inner = self._split_nested()[1]
        for pattern, paths in sorted(self.swapped.items()):
            n_in = inner.get(pattern, 0)
            where = ("" if not n_in else "  (all inside other swapped blocks)" if n_in == len(paths)
                     else f"  ({n_in} of them inside other swapped blocks)")
            lines.append(f"  {len(paths):4d}  {pattern}{where}")
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


def summary_line(counts: dict[str, int]) -> str:
    """{pattern: count} as one line, most frequent first: "18 conv -> BN -> relu6, 6 inverted
    residual (...)", or "nothing" (what `fastblocks verify` and `bench models` print)."""
    return ", ".join(f"{n} {p}" for p, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "nothing"
