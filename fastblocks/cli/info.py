"""`fastblocks info`: versions, device, every backend (available, or why not), what `auto` picks."""
from __future__ import annotations

import os
import warnings


def _families():
    """(family, c_op, ops, missing reason) per op family registered in the benchmarks."""
    from ..bench.cases import REGISTRY
    fams: dict[str, dict] = {}
    for name, op in REGISTRY.items():
        f = fams.setdefault(op.family, {"c_op": op.c_ops[0] if op.c_ops else None, "ops": [],
                                        "missing": op.missing()})
        f["ops"].append(name)
    return fams


def _auto_pick(family: str, c_op: str | None, device_type: str) -> str:
    import torch

    import fastblocks
    from fastblocks._backend import resolve
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with fastblocks.backend("auto"):
                got = resolve(family, torch.device(device_type), c_op)
    except Exception as exc:  # an op not registered in fastblocks._C, for instance
        return f"? ({type(exc).__name__}: {exc})"
    if got == "torch":
        reason = str(caught[0].message) if caught else ""
        return "torch (eager fallback: no kernel backend" + (f"; {reason.split('(', 1)[-1]}" if reason else ")")
    return got


def cmd_info(args) -> int:
    import torch

    import fastblocks
    from fastblocks import _extension
    from ..bench import env

    v = env.versions()
    print(f"fastblocks {v['fastblocks']}")
    print("versions")
    print(f"  python      {v['python']}")
    cuda = f"CUDA {v['cuda']}" if v["cuda"] else "CPU-only build"
    print(f"  torch       {v['torch']} ({cuda})")
    print(f"  triton      {v['triton'] or 'not installed: ' + str(_extension.TRITON_ERROR)}")
    print(f"  _C          {'loaded' if _extension.C_ERROR is None else _extension.C_ERROR}")
    print(f"  TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET', '0')}")
    print("device")
    has_cuda = torch.cuda.is_available()
    if has_cuda:
        for i in range(torch.cuda.device_count()):
            d = env.device_info(torch.device("cuda", i))
            print(f"  GPU {i}       {d['name']} (sm {d['capability']}, {d['multiprocessors']} SMs, "
                  f"{d['memory_bytes'] / 2 ** 30:.0f} GiB)")
    else:
        print("  GPU         none (torch.cuda.is_available() is False)")
    cpu = env.device_info("cpu")
    print(f"  CPU         {cpu['name']}, {cpu['logical_cpus']} logical CPUs, torch uses {cpu['threads']} threads")
    device_types = ["cpu", "cuda"]
    for dt in device_types:
        print(f"backends for {dt} tensors")
        for name in fastblocks.BACKENDS:
            reason = fastblocks.why_unavailable(name, dt)
            note = " (eager reference)" if name == "torch" else ""
            print(f"  {name:<8}  {'available' + note if reason is None else 'unavailable: ' + reason}")
    print("auto picks (per op family)")
    families = _families()
    width = max(map(len, families))  # squeeze_excite, conv_bn_act: wider than the old 11
    for family, f in families.items():
        ops = ", ".join(f["ops"])
        if f["missing"]:
            print(f"  {family:<{width}} op not available: {f['missing']}")
            continue
        picks = [f"cpu tensors -> {_auto_pick(family, f['c_op'], 'cpu')}"]
        if has_cuda:
            picks.append(f"cuda tensors -> {_auto_pick(family, f['c_op'], 'cuda')}")
        else:
            picks.append("cuda tensors -> (no GPU here)")
        print(f"  {family:<{width}} {'; '.join(picks)}   [{ops}]")
    return 0


def add_parser(sub) -> None:
    s = sub.add_parser("info", help="versions, device, backends and what `auto` picks")
    s.set_defaults(func=cmd_info)
