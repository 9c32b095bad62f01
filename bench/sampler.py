"""Sampling a node's /metrics on a thread while wrk loads it: its live keys, its feed sequence, and
how long each answer took (a stalled event loop shows there)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from bench.processes import http_get

SAMPLE_EVERY = 0.1  # seconds between /metrics samples


@dataclass(frozen=True, slots=True)
class Sample:
    at: float  # wall-clock seconds
    keys: int  # shareddb_keys: live keys by the clock
    seq: int  # shareddb_sequence: the node's feed sequence
    took: float  # seconds the node took to answer: a stalled event loop shows here


class Sampler:
    """Polls /metrics on a thread until stopped; one Sample per poll. With `until`, sets `stop`
    `tail` seconds after the first sample for which `until` holds."""

    def __init__(
        self, url: str, until: Callable[[Sample], bool] | None = None, tail: float = 0.0
    ) -> None:
        self.url = url
        self.until = until
        self.tail = tail
        self.samples: list[Sample] = []
        self.stop = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        reached: float | None = None
        while not self._done.is_set():
            sample = metrics_sample(self.url)
            if sample is not None:
                self.samples.append(sample)
                if reached is None and self.until is not None and self.until(sample):
                    reached = time.monotonic()
            if reached is not None and time.monotonic() >= reached + self.tail:
                self.stop.set()
            self._done.wait(SAMPLE_EVERY)


def metrics_sample(url: str) -> Sample | None:
    began = time.monotonic()
    answer = http_get(f"{url}/metrics")
    took = time.monotonic() - began
    if answer is None or answer[0] != 200:
        return None
    found: dict[str, int] = {}
    for line in answer[1].decode().splitlines():
        name, _, value = line.partition(" ")
        if name in ("shareddb_keys", "shareddb_sequence"):
            found[name] = int(float(value))
    return Sample(time.time(), found["shareddb_keys"], found["shareddb_sequence"], took)
