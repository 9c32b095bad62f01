"""Schemathesis over the OpenAPI document a real node serves, with every check on: no server error,
no answer that differs from the document (status, content type, headers, body schema), every valid
request accepted and every invalid one refused.

`make test` runs a bounded number of cases per operation with a fixed seed (FUZZ_EXAMPLES, 20);
`make fuzz` runs many more (EXAMPLES=N, SEED=S). Rules the document cannot state are in hooks.py,
the settings in schemathesis.toml.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.harness import NodeProcess

pytestmark = pytest.mark.cluster

HERE = Path(__file__).parent
ROOT = HERE.parent.parent  # where `tests.fuzz.hooks` imports from
EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "20"))
SEED = os.environ.get("FUZZ_SEED", "1")  # empty: schemathesis picks one and prints it
TIME_LIMIT = float(os.environ.get("FUZZ_TIME_LIMIT", "300"))  # seconds the whole run may take


def test_the_node_answers_as_its_openapi_document_says(tmp_path: Path) -> None:
    """Invariant 6: bad input gets a clear 4xx and changes nothing; no request crashes a node."""
    node = NodeProcess(tmp_path / "n1", "n1").start()
    try:
        command = [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(HERE / "schemathesis.toml"),
            "run",
            f"{node.url}/v1/openapi.json",
            "--checks",
            "all",
            "--max-examples",
            str(EXAMPLES),
            *(["--seed", SEED] if SEED else []),
            "--workers",
            "1",
            "--no-color",
        ]
        # Run in tmp_path: schemathesis keeps a cache of the failures it found in its working
        # directory, and replays them on the next run there.
        env = {**os.environ, "SCHEMATHESIS_HOOKS": "tests.fuzz.hooks", "PYTHONPATH": str(ROOT)}
        run = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=TIME_LIMIT,
            check=False,
        )
        report = run.stdout[-20000:] + run.stderr[-5000:]
        assert run.returncode == 0, f"schemathesis found failures:\n{report}"
        print(run.stdout[run.stdout.rfind("Test cases:") :])  # cases, failures, seed (make fuzz)
        assert node.proc is not None
        assert node.proc.poll() is None, f"the node exited:\n{node.logs()}"
        # No error and no traceback, whatever came in: a malformed request (schemathesis's first
        # probe sends a NUL byte in a header) is a 400 and a debug line at most.
        logs = node.logs()
        assert " ERROR " not in logs, f"the node logged an error:\n{logs}"
        assert "Traceback" not in logs, f"the node logged a traceback:\n{logs}"
    finally:
        node.cleanup()
