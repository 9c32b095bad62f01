"""Skewed, frozen and test-controlled wall clocks for node processes, through libfaketime
(Debian's package `faketime`)."""

from __future__ import annotations

import math
import os
import time
from datetime import UTC, datetime
from pathlib import Path

FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
)
FAKETIME = next((path for path in FAKETIME_LIBS if os.path.exists(path)), None)
# The synchronized build, for a clock read from a file: libfaketime.so.1 parses the file into a
# static buffer that threads share, and a node's threads then read times minutes off now and then.
FAKETIME_MT = next(
    (mt for mt in (p.replace(".so.1", "MT.so.1") for p in FAKETIME_LIBS) if os.path.exists(mt)), None
)


def skewed_clock_env(seconds: int) -> dict[str, str]:
    """The environment of a node whose wall clock is `seconds` off; its monotonic clock is not."""
    assert FAKETIME is not None
    return {"LD_PRELOAD": FAKETIME, "FAKETIME": f"{seconds:+d}s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


def frozen_clock_env(when: str = "2027-01-15 10:00:00") -> dict[str, str]:
    """The environment of a node whose wall clock stands still at `when` (UTC); its monotonic
    clock runs."""
    assert FAKETIME is not None
    return {
        "LD_PRELOAD": FAKETIME,
        "FAKETIME": when,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "TZ": "UTC",
    }


class ManualClock:
    """A monotonic clock for in-process code that takes one as a callable (membership, the
    registry): it reads `now`, which only the test moves."""

    def __init__(self, start: float = 100.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class ControlledClock:
    """A wall clock a test sets and moves, for node processes started with `env()`.

    libfaketime reads the time from a file (`FAKETIME_TIMESTAMP_FILE`), again on every call
    (`FAKETIME_NO_CACHE`): `set(when)` writes `@when`, and from that moment the process's wall
    clock reads `when` and runs on in real time; `advance(s)` jumps it `s` seconds forward. The
    monotonic clock stays real, so timeouts and the event loop are unaffected. Several processes
    may share one clock (one file). A process started after the last `set` counts from its own
    start (libfaketime starts `@when` when it first reads it); the next `set` or `advance` lines
    every process up again. The synchronized build of libfaketime (libfaketimeMT) is used: the
    plain one, reloading the file, hands a node's threads times minutes off now and then."""

    def __init__(self, path: Path, start: float) -> None:
        assert FAKETIME_MT is not None
        self.path = path
        self._base = start  # the fake time (Unix seconds) written last
        self._set_at = time.monotonic()  # when it was written
        self.set(start)

    def env(self) -> dict[str, str]:
        assert FAKETIME_MT is not None
        return {
            "LD_PRELOAD": FAKETIME_MT,
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            # Without this, libfaketime 0.9.10 looks up whether the monotonic clock needs a fix
            # on every call (getenv, parsing): a node then spends most of its CPU in there.
            "FAKETIME_FORCE_MONOTONIC_FIX": "0",
            "TZ": "UTC",
        }

    def now(self) -> float:
        """What the processes' wall clock reads now (Unix seconds)."""
        return self._base + (time.monotonic() - self._set_at)

    def set(self, when: float) -> None:
        """From now on the wall clock reads `when` (Unix seconds, whole ones) and runs on."""
        when = float(int(when))
        stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%d %H:%M:%S")
        # Written whole to a new file, then renamed: a reader never sees half of it.
        fresh = self.path.with_name(self.path.name + ".new")
        fresh.write_text(f"@{stamp}\n", "ascii")
        os.replace(fresh, self.path)
        self._base, self._set_at = when, time.monotonic()

    def advance(self, seconds: float) -> None:
        """Jump forward `seconds` (rounded up to whole seconds) from where the clock is now."""
        self.set(math.ceil(self.now() + seconds))
