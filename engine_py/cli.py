"""Command line: `python -m engine_py <command>`.

Commands:
  info            version, CPU, the core's SIMD level, BLAS (version, kernel, threads),
                  OpenMP threads, build flags
  demo            the main job: ENGINE on the shipped Debian demo graph with MiniLM
  bench NAME ...  run a benchmark (see `python -m engine_py bench --help`)
"""
from __future__ import annotations

import argparse
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    import engine_py

    d = engine_py.info()
    width = max(len(k) for k in d)
    order = ["version", "cpu", "isa", "blas", "blas_version", "blas_corename", "blas_config",
             "blas_threads", "omp_threads", "num_threads", "threads_auto", "build_flags", "blas_error"]
    for k in order + sorted(set(d) - set(order)):
        if k in d:
            print(f"{k:<{width}}  {d[k] if d[k] is not None else '-'}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import main as demo_main

    return demo_main(args.rest)


def _cmd_bench(args: argparse.Namespace) -> int:
    import importlib

    from .bench import NAMES

    name = args.name.replace("-", "_")
    if name not in NAMES:
        print(f"unknown benchmark {args.name!r}; known: {', '.join(NAMES)}", file=sys.stderr)
        return 2
    try:
        mod = importlib.import_module(f"engine_py.bench.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"engine_py.bench.{name}":
            print(f"benchmark {args.name!r} is not implemented yet", file=sys.stderr)
            return 2
        raise
    return int(mod.main(args.rest) or 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine_py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="show version, CPU, SIMD level, BLAS, threads and build flags")
    p.set_defaults(func=_cmd_info)
    p = sub.add_parser("demo", help="the main job (see `python -m engine_py demo --help`)")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of the demo")
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("bench", help="run a benchmark and print its table (--out PATH also writes "
                                     "it: .json, else markdown)")
    p.add_argument("name", help="encoder | cache | engine | engine-step | early-exit | gmoe | threads | demo-study | qmatmul | "
                                "llm | engine-llm | engine-llm-exit | finetune | finetune-task | gmoe-llm")
    p.add_argument("rest", nargs=argparse.REMAINDER, help="options of that benchmark")
    p.set_defaults(func=_cmd_bench)
    argv = list(sys.argv[1:] if argv is None else argv)
    # `demo` and `bench NAME` own their options: hand them everything after the
    # command (argparse's REMAINDER does not capture leading --options).
    if argv and argv[0] == "demo":
        return _cmd_demo(argparse.Namespace(rest=argv[1:]))
    if len(argv) >= 2 and argv[0] == "bench" and not argv[1].startswith("-"):
        return _cmd_bench(argparse.Namespace(name=argv[1], rest=argv[2:]))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
