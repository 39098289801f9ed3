"""Shared pytest configuration.

In CI (CI=true) a skipped test is a failure: every optional dependency the
suite can use is installed there, so a skip would hide an untested feature.
The ASan run (ENGINE_PY_ASAN=1) is exempt: it skips the memory-growth test on
purpose, because the sanitizer keeps freed memory quarantined.
"""
import os


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI", "").lower() not in ("1", "true") or os.environ.get("ENGINE_PY_ASAN"):
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and session.exitstatus == 0:
        reporter.write_line(f"CI: {len(skipped)} test(s) skipped; in CI nothing may be skipped",
                            red=True)
        session.exitstatus = 1
