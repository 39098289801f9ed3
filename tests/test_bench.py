"""The benchmarks' output contract, on the fast cache benchmark (tiny sizes;
speed is not asserted): a table on stdout ending with the machine facts,
nothing written without --out, JSON or a markdown section with it."""
import json
import os

import pytest

import engine_py
from engine_py import bench
from engine_py.bench import cache as bench_cache

TINY = ["--nodes", "600", "--dim", "16", "--batch", "64", "--calls", "2", "--repeats", "1",
        "--no-progress"]
MACHINE_FIELDS = ("cpu", "isa", "blas_corename", "blas_version", "threads", "loadavg")


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    d = tmp_path / "cwd"
    d.mkdir()
    monkeypatch.chdir(d)
    return d


def _run(argv, capsys):
    old = engine_py.get_num_threads()
    try:
        assert bench_cache.main(argv) == 0
    finally:
        engine_py.set_num_threads(old)
    return capsys.readouterr().out


def test_bench_prints_and_writes_nothing_without_out(cwd, capsys):
    out = _run(TINY, capsys)
    assert "| engine_py gather, float16 cache (mmap)" in out
    info = engine_py.info()
    for fact in (info["cpu"], f"core SIMD {info['isa']}", f"kernel {info['blas_corename']}",
                 "load average"):
        assert fact in out, fact
    assert "wrote" not in out
    assert os.listdir(cwd) == []
    # the old flag still parses and still writes nothing
    _run(TINY + ["--no-write"], capsys)
    assert os.listdir(cwd) == []


def test_bench_out_json_has_the_machine_facts(cwd, tmp_path, capsys):
    path = tmp_path / "x.json"
    out = _run(TINY + ["--out", str(path)], capsys)
    assert f"wrote {path}" in out
    assert os.listdir(cwd) == []
    doc = json.loads(path.read_text(encoding="utf-8"))
    m = doc["machine"]
    for k in MACHINE_FIELDS:
        assert m.get(k) not in (None, ""), k
    assert m["isa"] in ("avx512", "avx2", "generic")
    assert m["cpu"] == engine_py.info()["cpu"] and m["blas_corename"] == engine_py.info()["blas_corename"]
    assert isinstance(m["threads"], int) and m["threads"] >= 1
    la = m["loadavg"]
    assert len(la["start"]) == 3 and len(la["end"]) == 3 and la["max_1min"] >= la["start"][0]
    assert doc["benchmark"] == "cache" and doc["command"].startswith("python -m engine_py bench cache")
    assert doc["results"]["nodes"] == 600 and doc["results"]["gather"]
    assert doc["markdown"].startswith("## Layer cache")


def test_bench_out_markdown_replaces_its_section_only(cwd, tmp_path, capsys):
    path = tmp_path / "BENCH.md"
    path.write_text("# mine\n\n<!-- bench:other:begin -->\nkeep me\n<!-- bench:other:end -->\n",
                    encoding="utf-8")
    _run(TINY + ["--out", str(path)], capsys)
    _run(TINY + ["--out", str(path)], capsys)
    text = path.read_text(encoding="utf-8")
    assert text.count("<!-- bench:cache:begin -->") == 1 and "keep me" in text
    _run(TINY + ["--out", str(path), "--section", "cache-small"], capsys)
    text = path.read_text(encoding="utf-8")
    assert "<!-- bench:cache-small:begin -->" in text and text.count("<!-- bench:cache:begin -->") == 1
    assert os.listdir(cwd) == []


def test_cli_bench_and_info(cwd, tmp_path, capsys):
    from engine_py.cli import main

    old = engine_py.get_num_threads()
    try:
        assert main(["bench", "cache"] + TINY + ["--out", str(tmp_path / "y.json")]) == 0
    finally:
        engine_py.set_num_threads(old)
    assert json.loads((tmp_path / "y.json").read_text())["machine"]["isa"]
    assert os.listdir(cwd) == []
    capsys.readouterr()
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("cpu", "isa", "blas_version", "blas_corename"):
        assert any(line.split()[:1] == [key] for line in out.splitlines()), key


def test_machine_line_and_info_fields():
    info = engine_py.info()
    assert info["isa"] in ("avx512", "avx2", "generic")
    assert isinstance(info["blas_corename"], str) and info["blas_corename"]
    assert info["blas_version"] and info["blas_version"] in info["blas_config"]
    assert info["cpu"]
    run = bench.start_run(sample_seconds=0.01)
    m = run.stop(threads=3)
    assert run.stop() is m and m["threads"] == 3
    line = bench.machine_line(m)
    assert info["cpu"] in line and "3 threads" in line and "load average" in line
