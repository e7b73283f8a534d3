"""Progress of long steps that reads well on a terminal and in a log file.

``progress(...)`` is used like ``tqdm``: iterate over it, or call ``update(n)`` / ``set_postfix(...)`` /
``close()``. When stderr is a terminal it is a tqdm bar. Otherwise (a log file, a batch job, a pipe) it
writes a plain line to stderr at most every ``PROBESUITE_PROGRESS_SECONDS`` seconds (default 30):
``extract train: 40/120 scenes (33%), 1.3 scenes/s, ETA 1m02s``, and a last line when a step that
keeps its bar (``leave=True``) ends. No carriage returns, so ``tail -f`` and CI logs stay readable.
"""
from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO

__all__ = ["progress", "progress_write", "interval_seconds", "PlainProgress", "format_seconds"]

ENV_INTERVAL = "PROBESUITE_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 30.0


def interval_seconds() -> float:
    """Seconds between plain progress lines (env ``PROBESUITE_PROGRESS_SECONDS``, default 30)."""
    raw = os.environ.get(ENV_INTERVAL, "").strip()
    if not raw:
        return DEFAULT_INTERVAL
    try:
        value = float(raw)
    except ValueError:
        return DEFAULT_INTERVAL
    return value if math.isfinite(value) and value >= 0 else DEFAULT_INTERVAL


def _isatty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or replaced streams
        return False


def format_seconds(s: float) -> str:
    """``75.2`` -> ``1m15s``; ``4000`` -> ``1h06m``; ``8.4`` -> ``8s``."""
    if not math.isfinite(s) or s < 0:
        return "?"
    s = int(round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _rate(n: float, dt: float, unit: str) -> str:
    if dt <= 0 or n <= 0:
        return f"? {unit}/s"
    r = n / dt
    return f"{r:.3g} {unit}/s" if r >= 1 else f"{dt / n:.3g} s/{unit}"


class PlainProgress:
    """The non-terminal progress reporter: a tqdm-like object writing a plain line every interval."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, desc: str = "",
                 unit: str = "it", initial: int = 0, leave: bool = True, disable: bool = False,
                 file: TextIO | None = None, interval: float | None = None):
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = initial
        self.initial = initial
        self.leave = leave
        self.disable = disable
        self.file = file
        self.interval = interval_seconds() if interval is None else interval
        self.postfix = ""
        self.start = time.monotonic()
        self.last_print = self.start
        self.printed = 0
        self.closed = False

    # ---------------------------------------------------------------------------------------- tqdm API
    def __iter__(self) -> Iterator:
        if self.iterable is None:
            raise TypeError("PlainProgress without an iterable is not iterable")
        try:
            for x in self.iterable:
                yield x
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total or 0)

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        """Count ``n`` more done; print a line when the interval has passed since the last one."""
        self.n += n
        if self.disable:
            return
        now = time.monotonic()
        if now - self.last_print >= self.interval:
            self._print(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Extra ``key=value`` facts shown at the end of the line (e.g. the current loss)."""
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """Nothing to redraw: lines are written by ``update``."""

    def close(self) -> None:
        """A last line for a step that did work and keeps its bar (``leave=True``), or that printed lines."""
        if self.closed:
            return
        self.closed = True
        if self.disable:
            return
        if self.printed or (self.leave and self.n > self.initial):
            self._print(time.monotonic(), final=True)

    def write(self, msg: str) -> None:
        print(msg, file=self._stream(), flush=True)

    # ---------------------------------------------------------------------------------------- output
    def _stream(self) -> TextIO:
        return self.file if self.file is not None else sys.stderr

    def line(self, now: float | None = None, final: bool = False) -> str:
        """The text of one progress line."""
        now = time.monotonic() if now is None else now
        dt = now - self.start
        done = self.n - self.initial
        head = f"{self.desc}: " if self.desc else ""
        n = int(self.n) if float(self.n).is_integer() else round(self.n, 2)
        if self.total:
            pct = 100.0 * self.n / self.total
            text = f"{head}{n}/{self.total} {self.unit} ({pct:.0f}%)"
        else:
            text = f"{head}{n} {self.unit}"
        text += f", {_rate(done, dt, self.unit)}"
        if final:
            text += f", done in {format_seconds(dt)}"
        elif self.total and done > 0:
            text += f", ETA {format_seconds((self.total - self.n) * dt / done)}"
        if self.postfix:
            text += f", {self.postfix}"
        return text

    def _print(self, now: float, final: bool = False) -> None:
        print(self.line(now, final), file=self._stream(), flush=True)
        self.last_print = now
        self.printed += 1


def progress(iterable: Iterable | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
             disable: bool | None = False, leave: bool = True, initial: int = 0, **tqdm_kwargs: Any) -> Any:
    """A tqdm bar on a terminal, a :class:`PlainProgress` (a line every N seconds) elsewhere.

    ``disable=True`` shows nothing; ``disable=None`` (tqdm's "only on a terminal") is treated like
    ``False``: log files get plain lines instead of nothing.
    """
    stream = sys.stderr
    if _isatty(stream):
        from tqdm import tqdm

        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=bool(disable), leave=leave,
                    initial=initial, file=stream, dynamic_ncols=True, **tqdm_kwargs)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, initial=initial, leave=leave,
                         disable=bool(disable))


def progress_write(msg: str) -> None:
    """Print ``msg`` to stderr without breaking a progress bar that is being drawn."""
    if _isatty(sys.stderr):
        from tqdm import tqdm

        tqdm.write(msg, file=sys.stderr)
    else:
        print(msg, file=sys.stderr, flush=True)
