"""Running wrk against one server and reading back the one result line the Lua scripts print.

Only this module knows wrk's command line; a run that saw any non-2xx response or socket error
raises WrkError, because a figure made of failed requests would be meaningless.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

SCRIPTS = Path(__file__).resolve().parent / "scripts"
RESULT_PREFIX = "BENCH_RESULT "
# wrk stops by itself after --duration; past this much longer it is hung, not slow.
GRACE_SECONDS = 30.0
STOP_POLL = 0.05  # seconds between looks at a run's stop event


class WrkError(Exception):
    """wrk is missing, failed, or measured failures (non-2xx responses, socket errors)."""


@dataclass(frozen=True, slots=True)
class WrkOptions:
    threads: int = 2
    connections: int = 32
    seconds: int = 8  # wrk takes whole seconds only
    timeout_seconds: int = 5


@dataclass(frozen=True, slots=True)
class WrkResult:
    """One wrk run, as common.lua's done() hook reported it; latencies in milliseconds."""

    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non2xx: int
    statuses: dict[str, int] = field(default_factory=dict)
    socket_errors: dict[str, int] = field(default_factory=dict)
    sample: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def wrk_binary() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise WrkError("wrk is not on PATH: install it (Debian: apt-get install -y wrk)")
    return found


def wrk_version() -> str:
    """The first line of `wrk -v` (which exits non-zero by design)."""
    done = subprocess.run([wrk_binary(), "-v"], capture_output=True, text=True, check=False)
    return (done.stdout or done.stderr).strip().splitlines()[0]


def run_wrk(
    url: str,
    script: str,
    args: list[str],
    options: WrkOptions,
    raw_output: Path | None = None,
    stop: threading.Event | None = None,
) -> WrkResult:
    """Run wrk with `bench/scripts/<script>` against `url`; raise WrkError on any failure.

    `stop` ends the run early once set: wrk stops on SIGINT and reports what it measured so far.
    """
    cmd = [
        wrk_binary(),
        f"--threads={options.threads}",
        f"--connections={options.connections}",
        f"--duration={options.seconds}s",
        f"--timeout={options.timeout_seconds}s",
        "--latency",
        f"--script={SCRIPTS / script}",
        url,
        "--",
        *args,
    ]
    # Its own session: a Ctrl-C meant for the bench must not make wrk print a half-run result,
    # and the cleanup below can kill it however the bench is interrupted.
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = _wait(proc, options.seconds + GRACE_SECONDS, stop)
    except BaseException:
        _kill(proc)
        raise
    if raw_output is not None:
        raw_output.parent.mkdir(parents=True, exist_ok=True)
        raw_output.write_text(f"$ {' '.join(cmd)}\n{stdout}{stderr}")
    if proc.returncode != 0:
        raise WrkError(f"wrk exited with {proc.returncode}: {stderr.strip() or stdout.strip()}")
    result = parse_result(stdout)
    failures = describe_failures(result)
    if failures:
        raise WrkError(f"{url} with {script}: {failures}")
    return result


def parse_result(stdout: str) -> WrkResult:
    """The `BENCH_RESULT {json}` line of a wrk run's output."""
    line = next((x for x in stdout.splitlines() if x.startswith(RESULT_PREFIX)), None)
    if line is None:
        raise WrkError(f"no {RESULT_PREFIX.strip()} line in wrk's output:\n{stdout}")
    data = orjson.loads(line[len(RESULT_PREFIX) :])
    seconds = data["duration_us"] / 1e6
    return WrkResult(
        requests=data["requests"],
        seconds=seconds,
        rps=data["requests"] / seconds if seconds > 0 else 0.0,
        p50_ms=data["p50_us"] / 1000,
        p90_ms=data["p90_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        non2xx=data["non2xx"],
        statuses=dict(data["statuses"]),
        socket_errors=dict(data["errors"]),
        sample=data["sample"],
    )


def describe_failures(result: WrkResult) -> str:
    """Empty when every request got a 2xx answer, else what went wrong, in one line."""
    problems = []
    if result.requests == 0:
        problems.append("no request completed")
    if result.non2xx:
        codes = ", ".join(f"{n} x {code}" for code, n in sorted(result.statuses.items()))
        problems.append(f"{result.non2xx} non-2xx responses ({codes}); first body: {result.sample!r}")
    errors = {kind: n for kind, n in result.socket_errors.items() if n}
    if errors:
        problems.append("socket errors " + ", ".join(f"{k}={n}" for k, n in sorted(errors.items())))
    return "; ".join(problems)


def _wait(proc: subprocess.Popen[str], timeout: float, stop: threading.Event | None) -> tuple[str, str]:
    """wrk's output once it exits; SIGINT (wrk's own early end) as soon as `stop` is set."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        step = remaining if stop is None or stop.is_set() else min(remaining, STOP_POLL)
        try:
            return proc.communicate(timeout=max(step, 0.0))
        except subprocess.TimeoutExpired:
            if time.monotonic() >= deadline:
                raise
            if stop is not None and stop.is_set():
                proc.send_signal(signal.SIGINT)


def _kill(proc: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
