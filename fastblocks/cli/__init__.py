"""The `fastblocks` command line, one module per command:

    fastblocks info                          versions, device, backends, what `auto` picks   (info.py)
    fastblocks list                          models (params, FLOPs, fused ops), ops, shape sets (list_cmd.py)
    fastblocks demo [--ops]                  the main job on a real photograph; --ops: per-op table (demo.py, demo_ops.py)
    fastblocks verify [MODEL] [--op NAME]    parity with eager of a model, or a fuzz of the ops   (verify.py)
    fastblocks bench ops --op NAME|all ...   time ops vs eager / torch.compile                  (bench_ops.py)
    fastblocks bench models --model NAME ... time whole models                                 (bench_models.py)
    fastblocks bench list                    ops and shape sets                                  (list_cmd.py)
    fastblocks profile MODEL                 per-block parameters, FLOPs, bytes and time         (profile.py)

Each module has ``add_parser(subparsers)`` and its ``cmd_*`` function; _common.py holds what
they share. Bad arguments exit with code 2 and a message; a failed check exits with 1.
"""
from __future__ import annotations

import os
import sys
from typing import Sequence

from . import bench_models, bench_ops, demo, info, list_cmd, profile, verify
from ._common import Parser, UsageError

__all__ = ["build_parser", "main"]


def _help(parser) -> int:
    parser.print_help(sys.stderr)
    return 2


def build_parser() -> Parser:
    p = Parser(prog="fastblocks",
               description="Fast, exact CNN building blocks: optimize a model, verify it, measure it.")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    info.add_parser(sub)
    list_cmd.add_parser(sub)
    demo.add_parser(sub)
    verify.add_parser(sub)
    b = sub.add_parser("bench", help="benchmarks: `bench ops`, `bench models`, `bench list`")
    bsub = b.add_subparsers(dest="bench_command", metavar="WHAT", parser_class=Parser)
    list_cmd.add_bench_parser(bsub)
    bench_ops.add_parser(bsub)
    bench_models.add_parser(bsub)
    profile.add_parser(sub)
    b.set_defaults(func=lambda a: _help(b))
    p.set_defaults(func=lambda a: _help(p))
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from_command_line = argv is None  # a process of its own: may re-exec itself (bench)
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse: --help (0) or a bad argument (2)
        return int(exc.code or 0)
    args.argv = argv
    args.from_command_line = from_command_line
    try:
        return int(args.func(args) or 0)
    except UsageError as exc:
        print(f"fastblocks: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `fastblocks ... | head`: stop quietly (as the Python docs advise)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
