"""Command line: `python -m engine_py <command>`.

Commands:
  info    version, BLAS in use and its thread count, OpenMP threads, build flags
"""
from __future__ import annotations

import argparse
import sys


def _cmd_info(args: argparse.Namespace) -> int:
    import engine_py

    d = engine_py.info()
    width = max(len(k) for k in d)
    for k in ("version", "blas", "blas_config", "blas_threads", "omp_threads",
              "num_threads", "build_flags"):
        print(f"{k:<{width}}  {d[k]}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m engine_py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("info", help="show version, BLAS, threads and build flags")
    p.set_defaults(func=_cmd_info)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
