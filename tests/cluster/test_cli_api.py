"""The command line of the API applications build on: `set --ttl/--if-version/--if-absent`,
`rm --if-version`, `txn FILE|-`, `watch PREFIX`, and `--url` given several times for failover.
Every refusal is one readable line and a non-zero exit."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import pytest

from shareddb.client import Client
from tests.cluster.conftest import StartNode
from tests.cluster.test_cli import Run, check_errors, describe, error_line, run_all, shareddb
from tests.harness import free_port, wait_for

pytestmark = pytest.mark.cluster

WAIT = 30.0


def closed_url() -> str:
    return f"http://127.0.0.1:{free_port()}"


def test_url_given_several_times_fails_over(start_node: StartNode) -> None:
    node = start_node("u1")
    down = closed_url()
    results = run_all(
        [
            Run("repeated", ["set", "k", "v", "--url", down, "--url", node.url]),
            Run("comma", ["ls", "--url", f"{down},{node.url}"]),
            Run("env", ["get", "nothing"], {"SHAREDDB_URL": f"{down},{node.url}"}),
            Run("all down", ["get", "k", "--url", down, "--url", closed_url()]),
        ]
    )
    assert results["repeated"].returncode == 0, describe(results["repeated"])
    assert results["comma"].returncode == 0, describe(results["comma"])
    check_errors(results, {"env": "nothing", "all down": down})


def test_set_with_conditions_and_ttl(start_node: StartNode) -> None:
    node = start_node("c1")
    url = ["--url", node.url]
    first = shareddb(Run("absent", ["set", "lock", "me", "--if-absent", "--ttl", "60", *url]))
    assert first.returncode == 0, describe(first)
    version = first.stdout.strip()
    results = run_all(
        [
            Run("taken", ["set", "lock", "you", "--if-absent", *url]),
            Run("stale", ["set", "lock", "you", "--if-version", "not-the-version", *url]),
            Run("both", ["set", "lock", "x", "--if-absent", "--if-version", version, *url]),
            Run("bad ttl", ["set", "lock", "x", "--ttl", "0", *url]),
            Run("rm stale", ["rm", "lock", "--if-version", "not-the-version", *url]),
        ]
    )
    check_errors(
        results,
        {
            "taken": version,
            "stale": version,
            "both": "exclude",
            "bad ttl": "--ttl",
            "rm stale": "precondition failed",
        },
    )
    assert "'lock'" in error_line(results["taken"])
    with Client(node.url) as db:
        held = db.get("lock")
        assert held is not None
        assert (held.value, held.version) == ("me", version)
        assert held.expires is not None
    updated = shareddb(Run("matching", ["set", "lock", "me2", "--if-version", version, *url]))
    assert updated.returncode == 0, describe(updated)
    removed = shareddb(Run("rm", ["rm", "lock", "--if-version", updated.stdout.strip(), *url]))
    assert removed.returncode == 0, describe(removed)


def test_txn_from_a_file_or_stdin(start_node: StartNode, tmp_path: Path) -> None:
    node = start_node("t1")
    url = ["--url", node.url]
    body = {
        "if": [{"key": "a", "absent": True}],
        "then": [{"op": "put", "key": "a", "value": "1"}, {"op": "delete", "key": "b"}],
    }
    (tmp_path / "txn.json").write_bytes(orjson.dumps(body))
    applied = shareddb(Run("file", ["txn", str(tmp_path / "txn.json"), *url]))
    assert applied.returncode == 0, describe(applied)
    with Client(node.url) as db:
        a = db.get("a")
    assert a is not None
    assert applied.stdout.splitlines() == [f"a\t{a.version}", "b\t-"]

    (tmp_path / "broken.json").write_text('{"if": [')
    results = run_all(
        [
            Run("again", ["txn", "-", *url], stdin=orjson.dumps(body).decode()),
            Run("not json", ["txn", str(tmp_path / "broken.json"), *url]),
            Run("not an object", ["txn", "-", *url], stdin="[1, 2]"),
            Run("malformed", ["txn", "-", *url], stdin='{"then": [{"op": "frobnicate"}]}'),
            Run("no file", ["txn", str(tmp_path / "missing.json"), *url]),
        ]
    )
    check_errors(
        results,
        {
            "again": "'a' is at version " + a.version,
            "not json": "broken.json",
            "not an object": "object",
            "malformed": "",
            "no file": "missing.json",
        },
    )


class WatchProcess:
    """`shareddb watch ...` running, its output lines collected as they come."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "shareddb", "watch", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_lines(self, count: int, what: str) -> list[str]:
        def enough() -> bool:
            if self.proc.poll() is not None and len(self.lines) < count:
                raise AssertionError(f"watch exited {self.proc.returncode}: {self.stderr()}")
            return len(self.lines) >= count

        wait_for(enough, WAIT, f"{what} (lines so far: {self.lines})")
        return self.lines[:count]

    def interrupt(self) -> int:
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(WAIT)

    def stderr(self) -> str:
        assert self.proc.stderr is not None
        return self.proc.stderr.read() if self.proc.poll() is not None else ""

    def kill(self) -> None:
        """Stop it if it still runs, and close its pipes."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(WAIT)
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()


def test_watch_prints_one_line_per_event_and_stops_on_ctrl_c(start_node: StartNode) -> None:
    node = start_node("w1")
    with Client(node.url) as db:
        db.put("app/old", "o")
        listed = db.list("app/")
        assert listed.seq is not None
        a = db.put("app/a", "alpha")
        db.put("elsewhere", "x")
        gone = db.delete("app/old")
        readable = WatchProcess("app/", "--since", str(listed.seq), "--url", node.url)
        as_json = WatchProcess("app/", "--json", "--since", str(listed.seq), "--url", node.url)
        try:
            lines = readable.wait_lines(2, "two readable lines")
            put_line, delete_line = (line.split("\t") for line in lines)
            assert put_line[1:] == ["put", "app/a", a.version, '"alpha"']
            assert delete_line[1:] == ["delete", "app/old", gone or "-", "-"]
            assert int(put_line[0]) < int(delete_line[0])
            events = [orjson.loads(line) for line in as_json.wait_lines(2, "two JSON lines")]
            assert [(e["event"], e["key"], e["value"]) for e in events] == [
                ("put", "app/a", "alpha"),
                ("delete", "app/old", None),
            ]
            assert events[0]["version"] == a.version
            db.put("app/b", "beta", ttl=60)
            live = readable.wait_lines(3, "a live line")[2].split("\t")
            assert live[1:5] == ["put", "app/b", live[3], '"beta"']
            assert live[5].startswith("expires ")
            for process in (readable, as_json):
                code = process.interrupt()
                err = process.stderr()
                assert code == 0, err
                assert "Traceback" not in err, err
        finally:
            readable.kill()
            as_json.kill()


def test_watch_reports_a_refusal_in_one_line(start_node: StartNode) -> None:
    node = start_node("w2", "--token", "s3cret")
    results = run_all(
        [
            Run("no token", ["watch", "p/", "--url", node.url]),
            Run("bad since", ["watch", "--since", "-1", "--url", node.url, "--token", "s3cret"]),
        ]
    )
    check_errors(results, {"no token": "token", "bad since": "--since"})
