"""Benchmarks: `python -m engine_py bench <name> [options]`.

Each benchmark is a module engine_py.bench.<name> with `main(argv) -> int`.
It measures engine_py and the tool a user would otherwise pick in the same
run and prints a table with the ratios, ending with a machine line (CPU
model, the core's SIMD level, OpenBLAS's version and kernel, threads, the
load average during the run). It writes a file only where `--out PATH`
says: PATH ending in .json gets JSON (machine facts, the numbers, the
markdown); any other PATH gets markdown, the benchmark's own section
(`--section`, default its name) replaced or added and every other section
kept, so `--out BENCHMARKS.md` updates the repository's file.

A benchmark module uses this package as

    run = start_run()                    # load sampling starts
    ...                                  # measure
    machine = run.stop(threads=n)        # machine facts, load during the run
    md = ... + machine_line(machine)
    finish(args, "name", md, machine, results)   # print; write only with --out
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import threading

__all__ = ["write_section", "with_kept_sections", "write_json", "machine_info", "machine_line", "start_run", "finish",
           "add_output_args", "NAMES", "run_worker_script"]

# Benchmarks known to the CLI (module names under engine_py.bench).
NAMES = ("encoder", "cache", "engine", "engine_step", "early_exit", "gmoe", "threads", "demo_study", "bpe",
         "qmatmul", "llm", "engine_llm", "engine_llm_exit", "finetune", "finetune_task",
         "gmoe_llm", "gmoe_collapse")

# Seconds between two load-average samples while a benchmark runs.
LOAD_SAMPLE_SECONDS = 5.0


def _loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):  # not available on this platform
        return None


class Run:
    """A benchmark run: samples the 1-minute load average from start_run()
    to stop() in a daemon thread (every LOAD_SAMPLE_SECONDS)."""

    def __init__(self, sample_seconds: float = LOAD_SAMPLE_SECONDS):
        self.started = datetime.datetime.now().astimezone()
        self.load_start = _loadavg()
        self._max = self.load_start[0] if self.load_start else None
        self._samples = 1 if self.load_start else 0
        self._stop = threading.Event()
        self._thread = None
        self.machine = None
        if self.load_start is not None:
            self._thread = threading.Thread(target=self._sample, args=(sample_seconds,),
                                            name="engine_py-bench-load", daemon=True)
            self._thread.start()

    def _sample(self, every: float) -> None:
        while not self._stop.wait(every):
            la = _loadavg()
            if la is not None:
                self._max = max(self._max, la[0])
                self._samples += 1

    def stop(self, threads: int | None = None) -> dict:
        """End the sampling; the machine facts with the load during the run
        (machine_info). Idempotent: later calls return the same dict."""
        if self.machine is not None:
            return self.machine
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        end = _loadavg()
        load = None
        if self.load_start is not None and end is not None:
            load = {"start": self.load_start, "end": end,
                    "max_1min": max(self._max, end[0]), "samples": self._samples + 1,
                    "seconds": round((datetime.datetime.now().astimezone() - self.started)
                                     .total_seconds(), 1)}
        self.machine = machine_info(threads=threads, loadavg=load, started=self.started)
        return self.machine


def start_run(sample_seconds: float = LOAD_SAMPLE_SECONDS) -> Run:
    """Start a benchmark run (load-average sampling); see Run."""
    return Run(sample_seconds)


def machine_info(threads: int | None = None, loadavg: dict | None = None,
                 started: datetime.datetime | None = None) -> dict:
    """Where and how a benchmark ran, as a JSON-ready dict: cpu (model),
    cpus / usable_cpus, isa (the core's SIMD level), blas, blas_version,
    blas_corename (OpenBLAS's kernel), blas_config, threads, loadavg
    (1/5/15-minute averages at the start and end of the run and the largest
    1-minute value sampled; None without os.getloadavg), engine_py version and
    commit, Python, OS, and the environment variables that change speed."""
    import engine_py

    info = engine_py.info()
    env = {k: os.environ[k] for k in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE", "OPENBLAS_NUM_THREADS",
                                      "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY",
                                      "ENGINE_PY_ISA", "ENGINE_PY_NUM_THREADS")
           if k in os.environ}
    from engine_py._machine import usable_cpus

    return {
        "date": (started or datetime.datetime.now().astimezone()).isoformat(timespec="seconds"),
        "cpu": info["cpu"],
        "arch": platform.machine(),
        "cpus": os.cpu_count(),
        "usable_cpus": usable_cpus(),
        "isa": info.get("isa"),
        "blas": info.get("blas"),
        "blas_version": info.get("blas_version"),
        "blas_corename": info.get("blas_corename"),
        "blas_config": info.get("blas_config"),
        "threads": int(threads if threads is not None else engine_py.get_num_threads()),
        "loadavg": loadavg,
        "engine_py": info["version"],
        "commit": _COMMIT_AT_START,
        "python": platform.python_version(),
        "os": f"{platform.system()} {platform.release()}",
        "env": env,
    }


def machine_line(machine: dict | None = None) -> str:
    """One line describing where and how a benchmark ran (machine_info()'s
    facts; without `machine`, the facts now, with no load figures)."""
    m = machine if machine is not None else machine_info()
    cpus = f"{m['cpus']} CPUs" + (f" ({m['usable_cpus']} usable)" if m["usable_cpus"] != m["cpus"] else "")
    la = m.get("loadavg")
    if la:
        load = (f"load average (1 min; this run's own threads count) {la['start'][0]:.2f} at the start, "
                f"{la['end'][0]:.2f} at the end, at most {la['max_1min']:.2f}")
    else:
        load = "load average not measured"
    blas = f"OpenBLAS {m['blas_version'] or '?'}, kernel {m['blas_corename'] or '?'}"
    if m.get("blas") and not str(m["blas"]).lower().startswith("openblas"):
        blas += f" ({m['blas']})"
    env = ", ".join(f"{k}={v}" for k, v in m["env"].items()
                    if k.startswith(("OPENBLAS_", "GOMP_", "OMP_", "ENGINE_PY_")))
    commit = f" (commit {m['commit']})" if m.get("commit") else ""
    return (f"{m['date'][:10]}, {m['cpu']} ({m['arch']}), {cpus}, core SIMD {m['isa']}, {blas}, "
            f"{m['threads']} thread{'s' if m['threads'] != 1 else ''}, {load}; "
            f"engine_py {m['engine_py']}{commit}, {env or 'OPENBLAS_*/OMP_* unset'}, "
            f"Python {m['python']}")


def add_output_args(parser, section: str) -> None:
    """The options every benchmark shares: --out, --section, --no-progress."""
    parser.add_argument("--out", default=None, metavar="PATH",
                        help="also write the result to PATH: *.json gets JSON (machine facts, numbers, "
                             "markdown); any other name gets markdown, this benchmark's section "
                             "replaced or added and the rest kept (e.g. --out BENCHMARKS.md). "
                             "Default: print only, write nothing")
    if not any("--section" in a.option_strings for a in parser._actions):
        parser.add_argument("--section", default=section,
                            help=f"section name in a markdown --out (default: {section})")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar or progress log lines")
    # kept so that old command lines still parse: nothing is written without --out
    parser.add_argument("--no-write", action="store_true", help=argparse.SUPPRESS)


def write_json(path: str, obj: dict, indent: int | None = 2) -> str:
    """Write obj as JSON to path (temporary file + rename); indent None: one
    line (large per-step histories). Returns path."""
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=indent, default=_json_default)
        f.write("\n")
    os.replace(tmp, path)
    return path


def _json_default(o):
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def finish(args, name: str, markdown: str, machine: dict, results: dict | None = None,
           argv: list | None = None, json_indent: int | None = 2) -> str | None:
    """Print the markdown and, with --out, write it (see the module
    docstring). Returns the path written, or None."""
    print(markdown)
    out = getattr(args, "out", None)
    if not out:
        return None
    out = os.fspath(out)
    if out.lower().endswith(".json"):
        cmd = "python -m engine_py bench " + " ".join([name.replace("_", "-")] + list(argv or []))
        path = write_json(out, {"benchmark": name, "command": cmd.strip(), "machine": machine,
                                "results": results or {}, "markdown": markdown}, json_indent)
    else:
        path = write_section(getattr(args, "section", None) or name, markdown, out)
    print(f"\nwrote {path}")
    return path


def progress_show(args):
    """show_progress_bar for a benchmark's own loops: off with --no-progress, else auto."""
    return False if getattr(args, "no_progress", False) else None


def _git_commit() -> str:
    """'abc1234' ('abc1234+changes' with uncommitted changes) when run from a
    git checkout, else ''."""
    import subprocess

    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        rev = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return ""
    if rev.returncode != 0:
        return ""
    return f"{rev.stdout.strip()}{'+changes' if dirty.stdout.strip() else ''}"


def write_section(name: str, markdown: str, path: str) -> str:
    """Replace (or append) the section `name` of the markdown file `path`
    (e.g. BENCHMARKS.md) with `markdown`; a new file gets a short header.

    Sections are delimited by HTML comments so reruns replace only their own
    table. Returns the path written.
    """
    path = os.fspath(path)
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    block = f"{begin}\n{markdown.rstrip()}\n{end}"
    text = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            text = f.read()
    if not text:
        text = (f"# engine_py benchmarks\n\nGenerated by `python -m engine_py bench <name> --out "
                f"{os.path.basename(path)}`; each section is replaced when its benchmark runs again. "
                "Both sides of every comparison are measured in the same run.\n")
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _m: block, text)
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)
    return path


def load_result(spec: str):
    """'path[=label]' -> (label, document, partial): a benchmark's JSON to
    merge (bench gmoe-llm / engine-llm --merge). A missing path with a
    `.partial` beside it loads that (a run cut short)."""
    path, _, label = spec.partition("=")
    label = label or os.path.basename(path)
    for p, partial in ((path, False), (path + ".partial", True)):
        if os.path.exists(p):
            with open(p, encoding="utf-8") as f:
                return label, json.load(f), partial
    raise ValueError(f"no such study result: {path} (nor {path}.partial)")


_SECTION = re.compile(r"<!-- bench:([\w.-]+):begin -->.*?<!-- bench:\1:end -->", re.S)


def with_kept_sections(markdown: str, path: str) -> str:
    """markdown followed by every `<!-- bench:NAME -->` section the file at
    path holds (a report that rewrites its whole file, such as bench
    engine-llm's docs/RESULTS.md, keeps the sections other benchmarks wrote
    into it with write_section)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        return markdown
    with open(path, encoding="utf-8") as f:
        old = f.read()
    kept = [m.group(0) for m in _SECTION.finditer(old)]
    if not kept:
        return markdown
    return markdown.rstrip() + "\n\n" + "\n\n".join(kept) + "\n"


# Read when the benchmark starts: commits made while a long run goes on must
# not be credited with its numbers.
_COMMIT_AT_START = _git_commit()


def run_worker_script(script: str, job: dict, timeout: float, log) -> dict:
    """Run `python script --worker` with the job as JSON on stdin and return
    the dict of its last "RESULT {...}" line (a benchmark side in a process of
    its own, so that its peak RSS and its libraries are its own), or
    {"ok": False, "reason": ...} on a timeout or a crash. The child finds this
    engine_py through PYTHONPATH and inherits the environment
    (GOMP_SPINCOUNT included, so every side spins the same)."""
    import subprocess
    import sys

    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ)
    env["PYTHONPATH"] = here + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    try:
        p = subprocess.run([sys.executable, script, "--worker"], input=json.dumps(job),
                           capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "reason": f"timed out after {timeout:.0f} s"}
    for line in p.stdout.splitlines()[::-1]:
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    tail = (p.stderr or "").strip().splitlines()[-3:]
    log(f"    child failed (exit {p.returncode}): " + " / ".join(tail))
    return {"ok": False, "reason": f"child exited {p.returncode}: {tail[-1][:160] if tail else ''}"}
