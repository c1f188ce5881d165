"""What every fastblocks command shares: argument types, usage errors, the device choice,
tables and the CPU memory set-up of timing runs."""
from __future__ import annotations

import argparse
import math
import os
import sys


class UsageError(Exception):
    """A bad argument found after parsing: printed as `fastblocks: error: ...`, exit code 2."""



def dtype_arg(text: str):
    from ..bench.cases import DTYPE_ALIASES, DTYPES
    name = DTYPE_ALIASES.get(text.lower(), text.lower())
    if name not in DTYPES:
        raise argparse.ArgumentTypeError(
            f"unknown dtype {text!r}; choose from {', '.join(DTYPES)} (or fp32, fp16, bf16, fp64)")
    return DTYPES[name]


def positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


def device_arg(name: str | None):
    import torch

    from ..bench import env
    if name is None:
        return env.default_device()
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA GPU here (torch.cuda.is_available() is False)")
    return torch.device(name)


def reexec_with_reused_memory() -> None:
    """Re-run this command with glibc's malloc keeping freed memory for reuse.

    By default glibc serves each allocation over 32 MB with a fresh mmap and unmaps it on free,
    so every call that makes such a tensor page-faults on its first touch, 4 KiB at a time: on
    the 2-core VM the CPU results come from, relu of a new 95 MB tensor took 31 ms, of which
    the kernel is 4 ms (a copy into an existing buffer: 6 ms). That cost lands on every
    provider alike, is noisy, and hides the kernels; a training loop on a caching allocator
    (jemalloc, tcmalloc, or PyTorch's own on CUDA) does not pay it. With mmap off and no
    trimming, freed tensors are reused: 4.1 ms. glibc reads the tunables at start-up, hence a
    new process. Tunables the caller set are left alone.
    """
    from ..bench import env as bench_env

    if os.environ.get(bench_env.MALLOC_TUNABLES_ENV):
        return
    env = {**os.environ, bench_env.MALLOC_TUNABLES_ENV: bench_env.REUSE_MEMORY_TUNABLES}
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", "fastblocks.cli", *sys.argv[1:]], env)


def fmt_err(e):
    if e is None:
        return "-"
    if isinstance(e, float) and math.isnan(e):
        return "nan"
    return "0" if e == 0 else f"{e:.1e}"


def print_table(rows, right=frozenset()):
    widths = [max(len(str(r[i])) for r in rows if i < len(r)) for i in range(len(rows[0]))]
    for j, r in enumerate(rows):
        cells = [str(c).rjust(widths[i]) if i in right else str(c).ljust(widths[i]) for i, c in enumerate(r)]
        print("  ".join(cells).rstrip())
        if j == 0:
            print("-" * (sum(widths) + 2 * (len(widths) - 1)))


class Parser(argparse.ArgumentParser):
    def error(self, message):  # exit code 2 and a message, as argparse does, plus a hint
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def timing_threads(device, threads: int | None) -> str:
    """Set torch's CPU threads for a timing run: ``threads`` when given; otherwise one thread
    when other processes hold the cores (a parallel region then waits for time slices and a
    10 µs op takes milliseconds: fastblocks.bench.env.cpu_oversubscribed). Returns a note for
    the header ("" when nothing was changed). Call only from a command (it sets global state)."""
    import torch

    from ..bench import env
    if device.type != "cpu":
        return ""
    if threads:
        torch.set_num_threads(threads)
        return ""
    check = env.cpu_oversubscribed()
    if check["oversubscribed"]:
        torch.set_num_threads(1)
        return (f" (other processes hold the CPU: {check['threads']} threads took "
                f"{check['multi_us'] / 1000:.0f} ms per parallel op, so timing with 1)")
    return ""


def swap_summary(report) -> str:
    """One line of an optimize() report: "17 conv-bn-act, 2 activation" (or "nothing"), with
    the swaps nested inside other swapped blocks listed apart (Report.summary)."""
    return report.summary()


def fused_ops(report) -> str:
    """The fastblocks ops an optimize() report's swaps run, with counts: "conv_bn_act x36,
    depthwise_conv2d x15, activation x9" (patterns of fastblocks/optimize/rules)."""
    counts: dict[str, int] = {}
    for pattern, n in report.counts().items():
        p = pattern.lower()
        op = ("depthwise_conv2d" if p.startswith("depthwise") else
              "grouped_conv2d" if "conv -> bn" in p and "shuffle" in p else
              "conv_bn_act" if "conv -> bn" in p else
              "squeeze_excite" if "squeeze" in p or p.startswith("se ") else
              "channel_shuffle" if "shuffle" in p else
              "activation" if p.startswith(("activation", "inline")) else pattern)
        counts[op] = counts.get(op, 0) + n
    return ", ".join(f"{op} x{n}" for op, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "-"


def print_device_header(title: str, device, note: str = "") -> None:
    """The first lines of `fastblocks demo`'s tables: title, device (threads) and stack."""
    import torch

    from ..bench import env
    v = env.versions()
    info = env.device_info(device)
    threads = torch.get_num_threads()
    where = (f"GPU {info['name']}" if device.type == "cuda"
             else f"CPU {info['name']}, {threads} thread{'s' if threads != 1 else ''}{note}"
             + (" (no GPU here)" if not torch.cuda.is_available() else ""))
    print(title)
    print(f"  device  {where}")
    print(f"  stack   fastblocks {v['fastblocks']}, torch {v['torch']}, triton {v['triton'] or '-'}, "
          f"python {v['python']}")
