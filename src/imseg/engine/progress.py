"""Progress: a tqdm bar on a terminal, a plain line every half minute in a log file.

tqdm writing to a file (``make demo > log``, CI) leaves one carriage-return
"line" per update, thousands of them; a log wants a few readable lines.
"""
from __future__ import annotations

import sys
import time
from typing import Any, Iterable, Iterator, TextIO

from tqdm.auto import tqdm

INTERVAL_SECONDS = 30.0


class PlainProgress:
    """The part of tqdm's interface the loops use (iterate, ``set_postfix``, ``close``), as periodic lines."""

    def __init__(self, iterable: Iterable, desc: str, total: int | None, initial: int, stream: TextIO,
                 interval: float = INTERVAL_SECONDS):
        self.iterable, self.desc, self.total, self.initial = iterable, desc, total, initial
        self.stream, self.interval = stream, interval
        self.postfix: dict[str, Any] = {}

    def __iter__(self) -> Iterator:
        last = time.monotonic()
        for done, item in enumerate(self.iterable, start=self.initial):
            if time.monotonic() - last >= self.interval:
                last = time.monotonic()
                extra = "".join(f" {k}={v}" for k, v in self.postfix.items())
                of = f"/{self.total}" if self.total else ""
                print(f"{self.desc}: {done}{of}{extra}", file=self.stream, flush=True)
            yield item

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        pass


def progress(iterable: Iterable, desc: str, enabled: bool = True, total: int | None = None, initial: int = 0,
             leave: bool = False, stream: TextIO | None = None):
    """A tqdm bar where ``stream`` (default stderr) is a terminal, else :class:`PlainProgress`."""
    stream = stream or sys.stderr
    if not enabled:
        return tqdm(iterable, disable=True)
    if getattr(stream, "isatty", lambda: False)():
        return tqdm(iterable, desc=desc, total=total, initial=initial, leave=leave, file=stream)
    return PlainProgress(iterable, desc, total, initial, stream)
