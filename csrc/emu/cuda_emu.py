"""Build and load the CUDA kernels of csrc/cuda/*.cu compiled for the CPU (cuda_emu.h), so tests
can call their launchers (csrc/cuda/launchers.h) on CPU tensors through ctypes.

    lib = load()                                   # builds on first use, cached by content hash
    fn = lib.launcher("activation_forward")        # fastblocks::cuda::activation_forward
    fn.argtypes = [...]; err = fn(...)             # cudaError_t; lib.last_message() says why

Adding a family: add it to FAMILIES with its .cu files (csrc/cuda/); each .cu is one
translation unit, and kernels may also sit in the csrc/cuda/*.cuh headers those files include
(family_kernels reads both). Its launchers are then callable by name; a launcher taking a shape
struct by reference takes a pointer to a ctypes.Structure with the same fields (Itanium C++ ABI:
references are pointers, enum classes their underlying int).

One rewrite is made to every .cu and csrc/cuda/*.cuh before compiling: `extern __shared__
[__align__(N)] T name[];` becomes `T* name = fb_emu::dynamic_shared<T>();` (a block-scope extern
array cannot name a per-launch buffer on the host). Line numbers are kept, so compiler messages
and the emulation's divergent-barrier reports point into csrc/cuda/.
"""
from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

# Each op family's CUDA translation units, in csrc/cuda/.
FAMILIES: dict[str, tuple[str, ...]] = {
    "activation": ("activation.cu",),
    "conv_bn_act": ("conv_bn_act.cu",),
    "depthwise": ("depthwise_forward.cu", "depthwise_backward_input.cu",
                  "depthwise_backward_weight.cu"),
    "shuffle": ("shuffle.cu",),
    "squeeze_excite": ("squeeze_excite.cu",),
}

ROOT = Path(__file__).resolve().parents[2]
EMU = ROOT / "csrc" / "emu"
CUDA_SRC = ROOT / "csrc" / "cuda"
# -O1: the launches are small and a build at -O2 takes ~2x as long on 2 cores.
CXXFLAGS = ["-std=c++20", "-O1", "-g0", "-fPIC", "-w", "-pthread"]

_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
_KERNEL = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s+)?(\w+)\s*\(")
_EXTERN_SHARED = re.compile(
    r"extern\s+__shared__\s+(?:__align__\s*\(\s*\d+\s*\)\s+)?([A-Za-z_][\w:<>, ]*?)\s+"
    r"(\w+)\s*\[\s*\]\s*;")


class EmuUnavailable(RuntimeError):
    """No host compiler or no CUDA headers (cuda_fp16.h, cuda_runtime_api.h) here."""


def cuda_include() -> Path:
    """CUDA's include folder: $CUDA_HOME/include, what nvcc reports, or /usr/local/cuda."""
    cands = [Path(os.environ[v]) / "include" for v in ("CUDA_HOME", "CUDA_PATH") if v in os.environ]
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                                 capture_output=True, text=True, timeout=60).stderr
            cands += [Path(m) for m in re.findall(r'INCLUDES="-I([^"\s]+)', out)]
        except (OSError, subprocess.SubprocessError):
            pass
    cands.append(Path("/usr/local/cuda/include"))
    for c in cands:
        if (c / "cuda_fp16.h").is_file() and (c / "cuda_runtime_api.h").is_file():
            return c.resolve()
    raise EmuUnavailable("CUDA headers (cuda_fp16.h, cuda_runtime_api.h) not found: set CUDA_HOME")


def rewrite(source: str) -> str:
    """The .cu text as the host compiler sees it (see the module docstring)."""
    return _EXTERN_SHARED.sub(r"\1* \2 = ::fb_emu::dynamic_shared<\1>();", source)


def family_files(family: str) -> list[Path]:
    """The family's .cu files (FAMILIES) and the csrc/cuda headers they include (directly or
    through another such header), each file once, in the order the compiler first reads them
    (a header before the file that includes it)."""
    seen: set[Path] = set()
    order: list[Path] = []

    def visit(path: Path) -> None:
        if path in seen:
            return
        seen.add(path)
        for name in _LOCAL_INCLUDE.findall(path.read_text()):
            if (CUDA_SRC / name).is_file():
                visit(CUDA_SRC / name)
        order.append(path)

    for name in FAMILIES[family]:
        cu = CUDA_SRC / name
        if not cu.is_file():
            raise FileNotFoundError(f"cuda_emu FAMILIES[{family!r}] names {name} "
                                    f"but {cu} does not exist")
        visit(cu)
    return order


def family_kernels(family: str) -> list[tuple[Path, str]]:
    """(file, name) of every __global__ function template of the family: in its .cu files and
    the csrc/cuda headers they include, in file order, each name once."""
    out, names = [], set()
    for path in family_files(family):
        for name in kernels_in(path):
            if name not in names:
                names.add(name)
                out.append((path, name))
    return out


def kernels_in(path: Path) -> list[str]:
    """Names of the __global__ functions declared in one source file, in order."""
    return _KERNEL.findall(path.read_text())


def _cache_key_files() -> list[Path]:
    """Every file a build reads: their contents key the build cache."""
    deps = sorted(EMU.glob("*.h")) + sorted(EMU.glob("*.cpp")) + sorted(EMU.glob("*.cu"))
    deps += sorted(CUDA_SRC.glob("*.cu*"))
    deps += sorted(CUDA_SRC.glob("*.h")) + sorted((ROOT / "csrc" / "include").rglob("*.h"))
    return deps


def build(cache: Path | None = None, jobs: int | None = None) -> Path:
    """Compile the emulation runtime and every family in FAMILIES into one shared library;
    returns its path. Reuses an earlier build of the same sources, flags and compiler."""
    cxx = os.environ.get("CXX", "g++")
    if shutil.which(cxx) is None:
        raise EmuUnavailable(f"no host C++ compiler ({cxx})")
    inc = cuda_include()
    key = hashlib.sha256()
    for p in _cache_key_files():
        key.update(p.name.encode() + p.read_bytes())
    key.update(" ".join([cxx, str(inc), *CXXFLAGS, *(f for fs in FAMILIES.values() for f in fs)])
               .encode())
    key.update(subprocess.run([cxx, "--version"], capture_output=True).stdout)
    cache = Path(cache or os.environ.get("FASTBLOCKS_EMU_CACHE", ROOT / "build" / "cuda_emu"))
    out_dir = cache / key.hexdigest()[:16]
    lib = out_dir / "libfastblocks_cuda_emu.so"
    if lib.is_file():
        return lib
    out_dir.mkdir(parents=True, exist_ok=True)
    # pytest-xdist workers of a fresh clone all ask at once: they write the same sources and
    # objects into out_dir, so one builds while the others wait on the lock, then reuse it.
    with open(out_dir / "build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not lib.is_file():
            _compile(out_dir, lib, cxx, inc, jobs)
    return lib


def _compile(out_dir: Path, lib: Path, cxx: str, inc: Path, jobs: int | None) -> None:
    flags = [*CXXFLAGS, "-include", str(EMU / "cuda_emu.h"), f"-I{ROOT / 'csrc' / 'include'}",
             f"-I{CUDA_SRC}", f"-I{EMU}", f"-isystem{inc}"]
    # The rewritten headers sit next to the rewritten units: `#include "x.cuh"` looks in the
    # including file's folder first, so it finds them before the originals (-I csrc/cuda).
    for cuh in sorted(CUDA_SRC.glob("*.cuh")):
        (out_dir / cuh.name).write_text(f'#line 1 "{cuh}"\n' + rewrite(cuh.read_text()))
    units = [(EMU / "cuda_emu_runtime.cpp", None)]
    cus = [CUDA_SRC / name for fam in FAMILIES for name in FAMILIES[fam]]
    for cu in [*cus, EMU / "emu_selftest.cu"]:
        if not cu.is_file():
            raise FileNotFoundError(f"cuda_emu FAMILIES names {cu.name} but {cu} does not exist")
        src = out_dir / f"{cu.stem}.emu.cpp"
        src.write_text(f'#line 1 "{cu}"\n' + rewrite(cu.read_text()))
        units.append((src, cu))

    def compile_one(unit):
        src, _ = unit
        obj = out_dir / (src.stem + ".o")
        r = subprocess.run([cxx, *flags, "-c", str(src), "-o", str(obj)], capture_output=True,
                           text=True)
        if r.returncode != 0:
            raise RuntimeError(f"cuda_emu: compiling {unit[1] or src} failed:\n{r.stderr[-6000:]}")
        return obj

    with ThreadPoolExecutor(jobs or min(len(units), os.cpu_count() or 1)) as pool:
        objs = list(pool.map(compile_one, units))
    tmp = lib.with_suffix(f".{os.getpid()}.tmp")
    subprocess.run([cxx, "-shared", "-pthread", "-o", str(tmp), *map(str, objs)], check=True)
    os.replace(tmp, lib)  # atomic: a reader without the lock sees all or nothing


class EmuLib:
    """The built library: launchers by name (fastblocks::cuda::<name>), the last error's text."""

    def __init__(self, path: Path):
        self.path = path
        self.dll = ctypes.CDLL(str(path))
        self.dll.fb_emu_last_message.restype = ctypes.c_char_p
        syms = subprocess.run(["nm", "-D", "--defined-only", str(path)], capture_output=True,
                              text=True, check=True).stdout.split()
        mangled = [s for s in syms if s.startswith(("_ZN10fastblocks4cuda", "_ZN15fb_emu_selftest"))]
        demangled = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True,
                                   text=True, check=True).stdout.splitlines()
        self.symbols = {d: m for d, m in zip(demangled, mangled)}

    def launcher(self, name: str, namespace: str = "fastblocks::cuda"):
        """The ctypes function of `<namespace>::<name>(...)`; set its argtypes/restype."""
        hits = [m for d, m in self.symbols.items() if d.startswith(f"{namespace}::{name}(")]
        if len(hits) != 1:
            raise LookupError(f"cuda_emu: {len(hits)} launchers named {name!r} "
                              f"(known: {sorted(d.split('(')[0] for d in self.symbols)})")
        return getattr(self.dll, hits[0])

    def launched(self) -> dict[str, int]:
        """Launches so far per kernel instantiation (demangled name, e.g. ``void
        fastblocks::cuda::(anonymous namespace)::nhwc_kernel<float, 3, 3, 1, 2, 4, false>(...)``)."""
        cap = 4096
        addrs, counts = (ctypes.c_void_p * cap)(), (ctypes.c_uint64 * cap)()
        n = min(self.dll.fb_emu_launches(addrs, counts, cap), cap)
        names = self._local_functions()
        return {names.get(addrs[i], hex(addrs[i] or 0)): counts[i] for i in range(n)}

    def _local_functions(self) -> dict[int, str]:
        # Kernels live in anonymous namespaces: local symbols, listed by nm but not by nm -D.
        base = ctypes.cast(self.dll.fb_emu_seed, ctypes.c_void_p).value
        out = subprocess.run(["nm", "-C", "--defined-only", str(self.path)], capture_output=True,
                             text=True, check=True).stdout.splitlines()
        table = {}
        for line in out:
            addr, kind, name = line.split(" ", 2)
            table[int(addr, 16)] = name
        seed_off = next(a for a, nm in table.items() if nm == "fb_emu_seed")
        return {base - seed_off + a: nm for a, nm in table.items()}

    def last_message(self) -> str:
        return self.dll.fb_emu_last_message().decode()

    def seed(self, seed: int) -> None:
        """Seed the shuffled block and thread order (per OS thread)."""
        self.dll.fb_emu_seed(ctypes.c_uint(seed))


_LOADED: EmuLib | None = None


def load() -> EmuLib:
    global _LOADED
    if _LOADED is None:
        _LOADED = EmuLib(build())
    return _LOADED
