"""What a result was measured on: versions, device, commit. Shared by the harness and the CLI."""
from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import torch


def versions() -> dict:
    """fastblocks, torch, triton, python and CUDA versions (None where absent)."""
    import fastblocks
    try:
        import triton
        triton_version = triton.__version__
    except Exception:
        triton_version = None
    return {
        "fastblocks": fastblocks.__version__,
        "torch": torch.__version__,
        "triton": triton_version,
        "python": platform.python_version(),
        "cuda": torch.version.cuda,  # the CUDA torch was built with; None on a CPU build
    }


def cpu_model() -> str:
    """The CPU's marketing name ("AMD EPYC 9654 96-Core Processor"), or the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    if sys.platform == "darwin":
        try:
            return subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                  text=True, timeout=5).stdout.strip() or platform.machine()
        except Exception:
            pass
    return platform.processor() or platform.machine() or "unknown"


def slugify(text: str) -> str:
    """Lowercase, [a-z0-9-] only, runs of anything else collapsed into one '-'."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def _cpu_model_short(model: str) -> str:
    # "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.00GHz" -> "intel xeon platinum 8480"
    model = re.sub(r"\((r|tm)\)", "", model, flags=re.I)
    model = re.sub(r"@.*$", "", model)
    model = re.sub(r"\b(cpu|processor|\d+-core)\b", "", model, flags=re.I)
    return " ".join(model.split()[:4])


def device_info(device: torch.device | str) -> dict:
    """Name, slug and properties of the device a benchmark runs on."""
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        name = torch.cuda.get_device_name(index)
        return {
            "type": "cuda",
            "name": name,
            "slug": slugify(name),
            "capability": ".".join(map(str, torch.cuda.get_device_capability(index))),
            "multiprocessors": props.multi_processor_count,
            "memory_bytes": props.total_memory,
            "threads": torch.get_num_threads(),  # host threads, for the record
        }
    model = cpu_model()
    threads = torch.get_num_threads()
    return {
        "type": "cpu",
        "name": model,
        "slug": f"cpu-{slugify(_cpu_model_short(model))}-{threads}t",
        "threads": threads,
        "logical_cpus": os.cpu_count(),
    }


def default_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


# glibc malloc tunables under which freed memory is reused rather than unmapped (see
# fastblocks.cli._reexec_with_reused_memory): no mmap-served allocations, no heap trimming.
MALLOC_TUNABLES_ENV = "GLIBC_TUNABLES"
REUSE_MEMORY_TUNABLES = "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=17179869184"


def cpu_malloc() -> dict:
    """How CPU tensors get their memory: glibc's tunables, and whether they keep freed memory
    for reuse (fresh large tensors then do not page-fault on every call)."""
    tunables = os.environ.get(MALLOC_TUNABLES_ENV)
    return {"glibc_tunables": tunables, "reuses_freed_memory": tunables == REUSE_MEMORY_TUNABLES}


def load_average() -> float | None:
    """The host's 1-minute load average (None where unknown): other work on the machine makes
    CPU timings noisy, so results record it."""
    try:
        return round(os.getloadavg()[0], 2)
    except (OSError, AttributeError):
        return None


def cpu_oversubscribed(reps: int = 15) -> dict:
    """Whether torch's CPU threads are fighting other processes for the cores.

    When another process keeps a core busy, every parallel region waits for a scheduler time
    slice (milliseconds) and a 10 µs op takes 4-16 ms. Time a small parallel op with the
    current thread count and with one thread: a large ratio means CPU timings are meaningless
    unless the run uses fewer threads.
    """
    import statistics
    import time

    threads = torch.get_num_threads()
    out = {"threads": threads, "oversubscribed": False}
    if threads <= 1:
        return out
    x = torch.rand(2 ** 18)  # past ATen's parallel grain size: a parallel region per call

    def median_us():
        torch.relu(x)
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            torch.relu(x)
            ts.append((time.perf_counter() - t) * 1e6)
        return statistics.median(ts)

    multi = median_us()
    try:
        torch.set_num_threads(1)
        single = median_us()
    finally:
        torch.set_num_threads(threads)
    out.update(multi_us=round(multi, 1), single_us=round(single, 1),
               oversubscribed=multi > 1000 and multi > 5 * single)
    return out


def git_commit() -> dict:
    """The commit of the fastblocks checkout (not the working directory's), "unknown" outside
    a git checkout; `dirty` says whether tracked files differ from it."""
    root = Path(__file__).resolve().parents[2]
    out = {"commit": "unknown", "dirty": None}
    try:
        res = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10)
        if res.returncode == 0 and res.stdout.strip():
            out["commit"] = res.stdout.strip()
            st = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                capture_output=True, text=True, timeout=10)
            if st.returncode == 0:
                out["dirty"] = bool(st.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return out
