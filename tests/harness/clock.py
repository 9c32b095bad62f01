"""Skewed wall clocks for node processes, through libfaketime (Debian's package `faketime`)."""

from __future__ import annotations

import os

FAKETIME_LIBS = (
    "/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1",
    "/usr/lib/faketime/libfaketime.so.1",
)
FAKETIME = next((path for path in FAKETIME_LIBS if os.path.exists(path)), None)


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
