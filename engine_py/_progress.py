"""Progress of long loops: a tqdm bar on a terminal or in Jupyter, log lines elsewhere.

Every long loop of the package (Encoder.encode, LayerCache.build / append,
EngineClassifier.fit and live early-exit prediction, the benchmarks) reports
through this one module:

    with progress(n, "encoding texts", "text", show_progress_bar, logger=_log,
                  long=n >= 256) as p:
        for batch in ...:
            ...
            p.update(len(batch))

``show`` is the public ``show_progress_bar``:

- False: nothing at all, neither a bar nor a log record.
- True: a tqdm bar on stderr, whatever stderr is.
- None (auto): for work the caller calls long, a bar (tqdm.auto: a widget in
  Jupyter, text on a terminal) when stderr is a terminal or the code runs in
  a Jupyter kernel (whose stderr is not a terminal); otherwise -- a batch job,
  a redirected stderr, CI -- log lines through ``logging`` at INFO on
  ``logger`` (``engine_py.<module>``): one when the work starts, then at most
  one every INTERVAL seconds (env ``ENGINE_PY_PROGRESS_INTERVAL`` overrides),
  and one at the end saying what was done, how long it took and the rate.
  Short work shows nothing.

Who prints the log lines: once the application has configured logging (a
handler anywhere on the way to the root logger, or a level set on an
``engine_py`` logger), its handlers and levels decide, as for any library.
While it has configured nothing, Python would drop INFO records, and a batch
job's log would show nothing for minutes; so the lines then go to stderr
through a fallback handler of this module (the logging configuration is not
touched). ``logging.disable`` is honoured either way.
"""
from __future__ import annotations

import logging
import math
import numbers
import os
import sys
import time
from typing import Any, Iterable, Optional

__all__ = ["progress", "Progress", "in_notebook", "log_interval", "INTERVAL"]

#: Seconds between two progress log lines (ENGINE_PY_PROGRESS_INTERVAL overrides).
INTERVAL = 10.0

# The clock, a module attribute so that tests can drive it (no sleeping).
_clock = time.monotonic

_fallback_handler: Optional[logging.Handler] = None


def log_interval() -> float:
    """Seconds between progress log lines: $ENGINE_PY_PROGRESS_INTERVAL when
    it holds a number >= 0, else INTERVAL."""
    v = os.environ.get("ENGINE_PY_PROGRESS_INTERVAL", "").strip()
    if v:
        try:
            f = float(v)
        except ValueError:
            f = -1.0
        if f >= 0 and math.isfinite(f):
            return f
    return float(INTERVAL)


def in_notebook() -> bool:
    """True inside a Jupyter (ipykernel) kernel: an IPython shell with a kernel.
    Plain IPython in a terminal has no kernel (and a terminal stderr)."""
    if "ipykernel" not in sys.modules:
        return False
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
    except Exception:  # pragma: no cover - a broken IPython install
        return False
    return shell is not None and getattr(shell, "kernel", None) is not None


def _stderr_is_tty() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError, OSError):  # None, closed, or a stand-in
        return False


def _mode(show: Any, long: bool) -> str:
    if show is None:
        if not long:
            return "off"
        return "bar" if _stderr_is_tty() or in_notebook() else "log"
    return "bar" if bool(show) else "off"


def _tqdm(total, initial: int, desc: str, unit: str):
    kw = dict(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr)
    try:
        from tqdm.auto import tqdm
        return tqdm(**kw)
    except ImportError:  # tqdm.notebook without ipywidgets on an older tqdm
        try:
            from tqdm.std import tqdm
        except ImportError:  # pragma: no cover - tqdm is a dependency
            return None
        return tqdm(**kw)


_PLURALS = {"batch": "batches", "process": "processes"}


def _plural(unit: str, count: float) -> str:
    if count == 1 or not unit:
        return unit
    return _PLURALS.get(unit, unit + "s")


def _fmt_count(x: float) -> str:
    return f"{x:,.0f}" if float(x).is_integer() else f"{x:,.2f}"


def _fmt_secs(s: float) -> str:
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


def _configured(logger: logging.Logger) -> bool:
    """Whether the application decides where this logger's records go: a
    handler on the way to the root, or a level set on an engine_py logger."""
    if logger.hasHandlers():
        return True
    lg: Optional[logging.Logger] = logger
    while lg is not None and lg.name != "root":
        if lg.level != logging.NOTSET:
            return True
        lg = lg.parent
    return False


def _emit(logger: logging.Logger, msg: str) -> None:
    global _fallback_handler
    if logger.manager.disable >= logging.INFO:
        return
    if _configured(logger):
        logger.info(msg)
        return
    if _fallback_handler is None:
        h = logging.StreamHandler()   # sys.stderr at emit time
        h.setFormatter(logging.Formatter("%(asctime)s %(name)s: %(message)s", "%Y-%m-%d %H:%M:%S"))
        _fallback_handler = h
    if _fallback_handler.stream is not sys.stderr:   # replaced (tests, notebooks): follow it
        _fallback_handler.setStream(sys.stderr)
    _fallback_handler.handle(logger.makeRecord(logger.name, logging.INFO, "(progress)", 0, msg,
                                               None, None))


class Progress:
    """A running piece of work. update(n) after each step, set_postfix(...)
    for figures worth showing (loss, accuracy), tick(detail) for sub-steps
    (a batch inside an epoch), close() at the end (or use it as a context
    manager, which also reports an interruption). Iterating over it iterates
    the wrapped iterable and updates by one per item."""

    def __init__(self, iterable: Optional[Iterable] = None, total: Optional[float] = None,
                 desc: str = "", unit: str = "it", show: Any = None,
                 logger: Any = "engine_py", initial: int = 0, long: bool = True):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.initial = initial
        self.n = initial
        self.postfix: dict = {}
        self._bar = None
        self._log: Optional[logging.Logger] = None
        self._closed = False
        self._interrupted: Optional[str] = None
        self._t0 = _clock()
        mode = _mode(show, long)
        if mode == "bar":
            self._bar = _tqdm(total, initial, desc, unit)
            if self._bar is None:  # pragma: no cover - no tqdm: log instead
                mode = "log"
        if mode == "log":
            self._log = logger if isinstance(logger, logging.Logger) else logging.getLogger(logger)
            self._interval = log_interval()
            self._last = self._t0
            what = (f"{_fmt_count(total)} {_plural(unit, total)}" if total is not None
                    else f"{unit} by {unit}")
            if initial:
                what += f", {_fmt_count(initial)} already done"
            _emit(self._log, f"{desc}: started, {what}")
        self._tick_refresh = self._t0

    @property
    def active(self) -> bool:
        """True when something is shown (a bar or log lines)."""
        return self._bar is not None or self._log is not None

    # ------------------------------------------------------------ reporting
    def update(self, n: float = 1) -> None:
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        elif self._log is not None:
            self._maybe_log(None)

    def tick(self, detail: str) -> None:
        """A sub-step of the current unit (e.g. batch 40/250 of an epoch):
        shown after the bar, and in a log line when one is due."""
        if self._bar is not None:
            now = _clock()
            if now - self._tick_refresh >= 0.5:
                self._tick_refresh = now
                self._bar.set_postfix_str(self._postfix_str(detail), refresh=True)
        elif self._log is not None:
            self._maybe_log(detail)

    def set_postfix(self, values: Optional[dict] = None, **kw) -> None:
        self.postfix = dict(values or {}, **kw)
        if self._bar is not None:
            self._bar.set_postfix_str(self._postfix_str(None), refresh=False)

    def _postfix_str(self, detail: Optional[str]) -> str:
        parts = [detail] if detail else []
        parts += [f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.postfix.items()]
        return ", ".join(parts)

    def _rate(self, elapsed: float) -> str:
        done = self.n - self.initial
        if elapsed <= 0:
            return ""
        r = done / elapsed
        return f"{r:,.3g} {_plural(self.unit, r)}/s" if r < 100 else f"{r:,.0f} {_plural(self.unit, r)}/s"

    def _maybe_log(self, detail: Optional[str]) -> None:
        now = _clock()
        if now - self._last < self._interval:
            return
        self._last = now
        elapsed = now - self._t0
        if self.total:
            pos = (f"{_fmt_count(self.n)}/{_fmt_count(self.total)} {_plural(self.unit, self.total)} "
                   f"({100.0 * self.n / self.total:.1f}%)")
        else:
            pos = f"{_fmt_count(self.n)} {_plural(self.unit, self.n)}"
        parts = [pos, f"{_fmt_secs(elapsed)} elapsed"]
        rate = self._rate(elapsed)
        if rate:
            parts.append(rate)
            done = self.n - self.initial
            if self.total and done > 0 and self.n < self.total:
                parts.append(f"about {_fmt_secs(elapsed * (self.total - self.n) / done)} left")
        msg = f"{self.desc}: " + ", ".join(parts)
        extra = self._postfix_str(detail)
        _emit(self._log, msg + (f"; {extra}" if extra else ""))

    # ------------------------------------------------------------ lifetime
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        if self._log is not None:
            elapsed = _clock() - self._t0
            done = self.n - self.initial
            if self._interrupted:
                head = f"interrupted ({self._interrupted}) at"
            elif self.total is not None and self.n < self.total:
                head = "stopped at"   # early stopping, or the caller left the loop
            else:
                head = "done,"
            count = (f"{_fmt_count(self.n)}/{_fmt_count(self.total)} {_plural(self.unit, self.total)}"
                     if self.total is not None and (self.n != self.total or self.initial)
                     else f"{_fmt_count(done)} {_plural(self.unit, done)}")
            msg = f"{self.desc}: {head} {count} in {_fmt_secs(elapsed)}"
            rate = self._rate(elapsed)
            if rate:
                msg += f" ({rate})"
            extra = self._postfix_str(None)
            _emit(self._log, msg + (f"; {extra}" if extra else ""))

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self._interrupted = exc_type.__name__
        self.close()

    def __iter__(self):
        if self.iterable is None:
            raise TypeError("this Progress wraps no iterable")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        except GeneratorExit:   # the caller stopped iterating early: not an error
            raise
        except BaseException as exc:
            self._interrupted = type(exc).__name__
            raise
        finally:
            self.close()


def progress(iterable_or_total: Any = None, desc: str = "", unit: str = "it", show: Any = None, *,
             logger: Any = "engine_py", initial: int = 0, long: bool = True,
             total: Optional[float] = None) -> Progress:
    """A Progress over an iterable (iterate it) or a total (call update()).

    show: the caller's show_progress_bar (False: silent; True: tqdm bar;
    None: auto, see the module docstring). long: whether the work is long
    enough to report in auto mode. logger: a logging.Logger or its name."""
    if iterable_or_total is None or isinstance(iterable_or_total, numbers.Real):
        return Progress(None, iterable_or_total if total is None else total, desc, unit, show,
                        logger, initial, long)
    return Progress(iterable_or_total, total, desc, unit, show, logger, initial, long)
