"""The one way tests, fault runs and benchmarks start processes: shareddb nodes (nodes.py),
redis-server (redis.py), fault-injecting proxies (proxy.py, ProxyThread for tests without an event
loop), skewed and test-controlled clocks (clock.py) and small real file systems (disk.py); every
child process is a LoggedProcess (process.py). A headless Chromium for the dashboard's tests is in
browser.py, imported on its own."""

from tests.harness.clock import (
    FAKETIME,
    FAKETIME_MT,
    ControlledClock,
    ManualClock,
    frozen_clock_env,
    skewed_clock_env,
)
from tests.harness.nodes import (
    NodeProcess,
    eventually,
    free_port_pair,
    free_ports,
    get_json,
    run_cli,
    serve_command,
    stop_all,
    wait_for,
)
from tests.harness.process import LISTENING, LoggedProcess
from tests.harness.procfs import cpu_seconds, status_bytes
from tests.harness.proxy import FaultProxy, Link, Links, ProxyThread
from tests.harness.redis import (
    RedisServer,
    find_redis_server,
    free_port,
    ping,
    redis_server_binary,
    running_redis,
    send,
    store_url,
)

__all__ = [
    "FAKETIME",
    "FAKETIME_MT",
    "LISTENING",
    "ControlledClock",
    "FaultProxy",
    "Link",
    "Links",
    "LoggedProcess",
    "ManualClock",
    "NodeProcess",
    "ProxyThread",
    "RedisServer",
    "cpu_seconds",
    "eventually",
    "find_redis_server",
    "free_port",
    "free_port_pair",
    "free_ports",
    "frozen_clock_env",
    "get_json",
    "ping",
    "redis_server_binary",
    "run_cli",
    "running_redis",
    "send",
    "serve_command",
    "skewed_clock_env",
    "status_bytes",
    "stop_all",
    "store_url",
    "wait_for",
]
