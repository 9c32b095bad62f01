"""Resident memory of node processes over a run, and whether it stayed flat.

A restarted node is a new process that starts small again, so the trend is measured per process:
the median of its samples in the first and in the last tenth of the measured window (after the
warm-up), for the processes that lived through both. The soak keeps one node that is never killed,
so at least one process always spans the whole window.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections import defaultdict
from dataclasses import dataclass, field

from tests.chaos.cluster import ChaosCluster
from tests.harness import status_bytes

INTERVAL = 1.0  # seconds between two samples of every node
GROWTH = 1.5  # the end of a process may be at most this times its start...
FLOOR_KB = 24 * 1024  # ...or this much above it: small absolute growth is allocator noise
EDGE = 0.1  # the share of the window whose median is "the start" and, at the other end, "the end"


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # time.monotonic()
    slot: int
    pid: int
    kb: int


@dataclass(slots=True)
class Memory:
    """Every sample of a run; `warmup` seconds after `began` are not measured."""

    began: float
    warmup: float
    samples: list[Sample] = field(default_factory=list)

    async def watch(self, cluster: ChaosCluster, stop: asyncio.Event) -> None:
        """Sample every running node each INTERVAL until `stop` is set."""
        while not stop.is_set():
            now = time.monotonic()
            for slot in cluster.slots:
                proc = slot.node.proc
                if proc is not None and proc.poll() is None:
                    found = status_bytes(proc.pid, "VmRSS")
                    if found is not None:
                        self.samples.append(Sample(now, slot.index, proc.pid, found // 1024))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), INTERVAL)

    def window(self) -> tuple[float, float, float]:
        """(start, end of the first tenth, start of the last tenth) of the measured window."""
        start = self.began + self.warmup
        end = max((s.at for s in self.samples), default=start)
        edge = (end - start) * EDGE
        return start, start + edge, end - edge

    def by_node(self) -> dict[int, tuple[int | None, int | None]]:
        """slot -> (median kB in the first tenth, median kB in the last tenth), whichever process."""
        start, first_end, last_start = self.window()
        found: dict[int, tuple[int | None, int | None]] = {}
        for slot in sorted({s.slot for s in self.samples}):
            mine = [s for s in self.samples if s.slot == slot]
            first = [s.kb for s in mine if start <= s.at <= first_end]
            last = [s.kb for s in mine if s.at >= last_start]
            found[slot] = (_median(first), _median(last))
        return found

    def problems(self) -> tuple[int, list[str]]:
        """(how many processes spanned the window, the ones that grew past the bound)."""
        start, first_end, last_start = self.window()
        per_pid: dict[int, list[Sample]] = defaultdict(list)
        for sample in self.samples:
            per_pid[sample.pid].append(sample)
        spanned, grew = 0, []
        for pid, samples in per_pid.items():
            first = _median([s.kb for s in samples if start <= s.at <= first_end])
            last = _median([s.kb for s in samples if s.at >= last_start])
            if first is None or last is None or samples[0].at > start:
                continue  # started after the warm-up: a restart, too young to show a trend
            spanned += 1
            if last > max(first * GROWTH, first + FLOOR_KB):
                grew.append(
                    f"n{samples[0].slot + 1} (pid {pid}) grew from {first / 1024:.0f} MB "
                    f"to {last / 1024:.0f} MB"
                )
        if not spanned:
            grew.append("no node process lived through the whole measured window")
        return spanned, grew


def _median(values: list[int]) -> int | None:
    return int(statistics.median(values)) if values else None
