"""The README's examples are run, not read: each one runs against a real node and gives what it shows.

Every fenced `console` or `sh` block with `$ ` lines is run, command by command, in README order,
against one node started for this test; the lines after a command are its expected output. The
examples are written for `localhost:8080`: every `localhost:PORT` and `127.0.0.1:PORT`, in commands
and in expected output, is rewritten to the port of the node that runs the block. `shareddb`
commands ask that node too (SHAREDDB_URL).

Expected output is compared as JSON (parsed) when it is JSON, else line by line with runs of
whitespace collapsed. `…` is a wildcard: a JSON string "…" matches any value, and inside a line or a
string it matches any text. Output that starts with `HTTP/` (from `curl -i`) is a status line, the
headers that matter (each must be in the response; Date, Server and Content-Length are left out),
a blank line and the body.

A block right after `<!-- node: ARGS -->` runs against its own node started with those `serve`
flags (for example a token); a block after `<!-- not run -->` is not run. A block right after
`<!-- file: NAME -->` (the Python client's examples) is a file NAME in the directory the commands
run in, its addresses rewritten like the commands'; `python` is this interpreter.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shareddb.config import SETTINGS
from tests.harness import NodeProcess

pytestmark = pytest.mark.cluster

README = Path(__file__).resolve().parents[1] / "README.md"
WILDCARD = "…"
NOT_RUN = "<!-- not run -->"
NODE_MARKER = re.compile(r"<!-- node: (.*) -->")
FILE_MARKER = re.compile(r"<!-- file: ([\w.-]+) -->")
ADDRESS = re.compile(r"\b(?:localhost|127\.0\.0\.1):\d{2,5}\b")
FENCE = re.compile(r"```(\w*)\s*$")
TABLE_HEADER = "| flag | env var | default | meaning |"
COMMAND_TIMEOUT = 60.0


@dataclass
class Example:
    line: int  # 1-based line of the command in README.md
    command: str
    expected: list[str]


@dataclass
class Block:
    line: int
    node_args: tuple[str, ...]
    examples: list[Example] = field(default_factory=list)


def parse_blocks(text: str) -> list[Block]:
    """Every runnable block of the README, in order."""
    lines = text.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        body = lines[i + 1 : end]
        marker = next((lines[j].strip() for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        runnable = fence.group(1) in ("console", "sh") and any(ln.startswith("$ ") for ln in body)
        if runnable and marker != NOT_RUN:
            node = NODE_MARKER.fullmatch(marker)
            block = Block(i + 1, tuple(shlex.split(node.group(1))) if node else ())
            block.examples = list(_examples(body, first_line=i + 2))
            blocks.append(block)
        i = end + 1
    return blocks


def parse_files(text: str) -> dict[str, str]:
    """The README's example files: name -> content."""
    files: dict[str, str] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        marker = FILE_MARKER.fullmatch(line.strip())
        if marker is None:
            continue
        start = next(j for j in range(i + 1, len(lines)) if lines[j].strip()) + 1
        assert FENCE.match(lines[start - 1]), f"README.md:{i + 1}: no code block after the file marker"
        end = next(j for j in range(start, len(lines)) if lines[j].startswith("```"))
        files[marker.group(1)] = "\n".join(lines[start:end]) + "\n"
    return files


def _examples(body: list[str], first_line: int) -> Iterator[Example]:
    i = 0
    while i < len(body):
        if not body[i].startswith("$ "):
            raise AssertionError(f"README.md:{first_line + i}: output before any command")
        line = first_line + i
        command = body[i][2:]
        while command.endswith("\\"):
            i += 1
            command = command[:-1] + body[i]
        i += 1
        expected: list[str] = []
        while i < len(body) and not body[i].startswith("$ "):
            expected.append(body[i])
            i += 1
        yield Example(line, command, expected)


# -- comparing output ---------------------------------------------------------------------------


def _pattern(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in expected.split(WILDCARD)), re.DOTALL)


def _text_matches(expected: str, actual: str) -> bool:
    return _pattern(expected).fullmatch(actual) is not None


def json_matches(expected: Any, actual: Any) -> bool:
    if isinstance(expected, str) and WILDCARD in expected:
        return expected == WILDCARD or (isinstance(actual, str) and _text_matches(expected, actual))
    if isinstance(expected, dict):
        return (
            isinstance(actual, dict)
            and expected.keys() == actual.keys()
            and all(json_matches(value, actual[key]) for key, value in expected.items())
        )
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(json_matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    return type(expected) is type(actual) and expected == actual


def _squeeze(line: str) -> str:
    return " ".join(line.split())


def body_mismatch(expected: str, actual: str) -> str | None:
    """Why `actual` is not the output `expected` shows, or None when it is."""
    try:
        want = json.loads(expected)
    except ValueError:
        want_lines = [_squeeze(ln) for ln in expected.splitlines()]
        got_lines = [_squeeze(ln) for ln in actual.splitlines()]
        if len(want_lines) == len(got_lines) and all(
            _text_matches(w, g) for w, g in zip(want_lines, got_lines, strict=True)
        ):
            return None
        return "the output differs"
    try:
        got = json.loads(actual)
    except ValueError:
        return "the output is not JSON"
    return None if json_matches(want, got) else "the JSON differs"


def http_mismatch(expected: str, actual: str) -> str | None:
    """Compare `curl -i` output: status line, the headers shown, then the body."""
    want_head, _, want_body = expected.partition("\n\n")
    got_head, _, got_body = actual.partition("\n\n")
    want_status, *want_headers = want_head.splitlines()
    got_status, *got_headers = got_head.splitlines()
    if not _text_matches(want_status.strip(), got_status.strip()):
        return f"the status line is {got_status!r}"
    headers: dict[str, list[str]] = {}
    for header in got_headers:
        name, _, value = header.partition(":")
        headers.setdefault(name.strip().lower(), []).append(value.strip())
    for header in want_headers:
        name, _, value = header.partition(":")
        found = headers.get(name.strip().lower(), [])
        if not any(_text_matches(value.strip(), v) for v in found):
            return f"no header {header!r} (got {name.strip()}: {found})"
    return body_mismatch(want_body.strip("\n"), got_body.strip("\n"))


def mismatch(expected: str, actual: str) -> str | None:
    if expected.startswith("HTTP/"):
        return http_mismatch(expected, actual)
    return body_mismatch(expected, actual)


# -- running examples ---------------------------------------------------------------------------


def _on(node: NodeProcess, text: str) -> str:
    return ADDRESS.sub(f"127.0.0.1:{node.port}", text)


def run_example(
    example: Example, node: NodeProcess, env: dict[str, str], workdir: Path, files: dict[str, str]
) -> None:
    for name, content in files.items():
        (workdir / name).write_text(_on(node, content), "utf-8")
    command = _on(node, example.command)
    result = subprocess.run(
        ["bash", "-c", command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**env, "SHAREDDB_URL": node.url},
        cwd=workdir,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    actual = result.stdout.decode("utf-8", "replace").replace("\r\n", "\n").strip("\n")
    expected = _on(node, "\n".join(example.expected)).strip("\n")
    problem = mismatch(expected, actual)
    assert problem is None, (
        f"README.md:{example.line}: {problem}\n$ {example.command}\n"
        f"--- README shows ---\n{expected}\n--- the node answered ---\n{actual}\n"
        f"--- log of the node ---\n{node.logs()}"
    )


def command_env(bin_dir: Path) -> dict[str, str]:
    """The environment of the examples: `shareddb` and `python` are this interpreter's, no
    SHAREDDB_ settings."""
    bin_dir.mkdir()
    for name, run in (("shareddb", "-m shareddb "), ("python", "")):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} {run}"$@"\n')
        script.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHAREDDB_")}
    env["PATH"] = os.pathsep.join([str(bin_dir), env.get("PATH", "")])
    return env


def test_readme_examples_give_the_output_shown(tmp_path: Path) -> None:
    if shutil.which("curl") is None:
        pytest.skip("the README's examples use curl, which is not installed")
    text = README.read_text("utf-8")
    blocks, files = parse_blocks(text), parse_files(text)
    env = command_env(tmp_path / "bin")
    workdir = tmp_path / "work"
    workdir.mkdir()
    nodes: dict[tuple[str, ...], NodeProcess] = {}
    try:
        for block in blocks:
            node = nodes.get(block.node_args)
            if node is None:
                name = f"node{len(nodes) + 1}"
                node_id = None if "--node-id" in block.node_args else "node1"
                node = NodeProcess(tmp_path / name, node_id, *block.node_args)
                nodes[block.node_args] = node
                node.start()
            for example in block.examples:
                run_example(example, node, env, workdir, files)
    finally:
        for node in nodes.values():
            if node.running():
                node.stop()
            node.cleanup()


def test_readme_runs_an_example_of_every_endpoint() -> None:
    commands = [ex.command for block in parse_blocks(README.read_text("utf-8")) for ex in block.examples]
    shown = {
        "seed update": r"/nodes/update\?name=\w+&value=",
        "seed update of an empty value": r"/nodes/update\?name=\w+&value='",
        "seed update, percent-encoded": r"/nodes/update\?.*%26",
        "seed get": r"/nodes/get\?name=",
        "seed remove": r"/nodes/remove\?name=",
        "seed dump": r"/nodes/dump",
        "PUT": r"-X PUT .*/v1/kv/\w",
        "GET of a key": r"curl -s (-i )?localhost:8080/v1/kv/\w",
        "DELETE": r"-X DELETE .*/v1/kv/\w",
        "listing by prefix with a limit": r"/v1/kv\?prefix=.*&limit=",
        "listing after a key": r"/v1/kv .*after=",
        "health": r"/health",
        "cluster": r"/v1/cluster",
        "digest": r"/v1/digest",
        "OpenAPI": r"/v1/openapi\.json",
        "watch with since": r"/v1/watch\?key=.*&since=",
        "w": r"[?&]w=\d",
        "timeout": r"[?&]timeout=",
        "token": r"Authorization: Bearer",
        "shareddb set --if-absent": r"shareddb set .*--if-absent",
        "shareddb set --if-version": r"shareddb set .*--if-version",
        "shareddb set --ttl": r"shareddb set .*--ttl",
        "shareddb txn": r"shareddb txn",
        "shareddb watch": r"shareddb watch",
        "shareddb watch --json": r"shareddb watch .*--json",
        "the Python client": r"^python \w+\.py$",
    }
    missing = [
        what for what, pattern in shown.items() if not any(re.search(pattern, c) for c in commands)
    ]
    assert not missing, f"the README runs no example of: {', '.join(missing)}"


def test_readme_runs_every_example_file() -> None:
    text = README.read_text("utf-8")
    commands = " ".join(ex.command for block in parse_blocks(text) for ex in block.examples)
    files = parse_files(text)
    assert {"counter.py", "lock.py"} <= files.keys()
    unused = [name for name in files if name not in commands]
    assert not unused, f"no README command runs {', '.join(unused)}"


def config_table() -> str:
    """The configuration table of the README, as config.SETTINGS declares it."""
    rows = [TABLE_HEADER, "| --- | --- | --- | --- |"]
    for s in SETTINGS:
        rows.append(f"| `{s.flag}` | `{s.env}` | `{s.default}` | {s.meaning} |")
    return "\n".join(rows)


def test_readme_configuration_table_lists_every_setting() -> None:
    lines = README.read_text("utf-8").splitlines()
    assert TABLE_HEADER in lines, (
        f"README.md has no configuration table; it should be:\n{config_table()}"
    )
    start = lines.index(TABLE_HEADER) + 2
    rows: list[tuple[str, ...]] = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(tuple(cell.strip().strip("`") for cell in line.strip().strip("|").split(" | ")))
    expected = [(s.flag, s.env, s.default, s.meaning) for s in SETTINGS]
    assert rows == expected, f"README.md's configuration table should be:\n{config_table()}"


if __name__ == "__main__":
    print(config_table())
