"""Progress of long probe passes on the terminal: what, done / total, rate, time left.

A probe reports `(done, total)` through a callback (probes take `progress=`); `Progress.task` makes
one such callback per pass. Nothing is shown for a pass until it has run `delay` seconds and is
projected to take more than `min_total` seconds, so short passes stay silent. On a terminal the line
is rewritten in place; elsewhere (a CI log) a line is written at most every `interval` seconds,
and a last one when the pass ends.

The plugin writes through pytest's terminal reporter with output capture suspended (as pytest's
live logging does), so `-q`, --junitxml and the JSON records see nothing of it. xdist workers get
no Progress: their output never reaches the terminal.
"""

from __future__ import annotations

import time
from collections.abc import Callable

Write = Callable[[str], None]


class Progress:
    def __init__(self, write: Write, tty: bool, delay: float = 2.0, min_total: float = 10.0,
                 interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.write, self.tty = write, tty
        self.delay, self.min_total, self.interval, self.clock = delay, min_total, interval, clock

    def task(self, what: str, unit: str) -> Callable[[int, int], None]:
        """A (done, total) callback for one pass, e.g. task("routing Jacobians of m", "KDs")."""
        start, state = self.clock(), {"shown": False, "last": -float("inf")}

        def update(done: int, total: int) -> None:
            now = self.clock()
            elapsed = now - start
            if done <= 0 or elapsed < self.delay:
                return
            rate = done / elapsed
            if not state["shown"] and total / rate < self.min_total:
                return
            finished = done >= total
            if not (self.tty or finished or now - state["last"] >= self.interval):
                return
            line = progress_line(what, unit, done, total, elapsed)
            if self.tty:
                self.write(("\r" if state["shown"] else "\n") + line.ljust(100) + ("\n" if finished else ""))
            else:
                self.write("\n" + line + ("\n" if finished else ""))
            state["shown"], state["last"] = True, now

        return update


def progress_line(what: str, unit: str, done: int, total: int, elapsed: float) -> str:
    rate = done / elapsed if elapsed > 0 else float("inf")
    if done >= total:
        return f"  {what}: {done}/{total} {unit} in {_duration(elapsed)} ({rate:.3g} {unit}/s)"
    left = (total - done) / rate if rate > 0 else float("inf")
    return f"  {what}: {done}/{total} {unit}, {rate:.3g} {unit}/s, ~{_duration(left)} left"


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"
