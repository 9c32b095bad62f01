"""How many processes serve a node (workers.py): the default for the machine, and the stores that
allow more than one."""

from __future__ import annotations

import pytest

from shareddb.config import Settings
from shareddb.workers import WorkersError, default_workers, workers_for


@pytest.mark.parametrize(("cores", "processes"), [(1, 1), (2, 1), (3, 3), (16, 16)])
def test_one_process_on_two_cores_or_fewer_else_one_per_core(cores: int, processes: int) -> None:
    assert default_workers(cores) == processes


def test_workers_asked_for_are_used_with_a_store_other_processes_can_read() -> None:
    assert workers_for(Settings(workers=3)) == 3
    assert workers_for(Settings(workers=2, store="redis://127.0.0.1:1/0")) == 2


def test_a_store_held_in_the_node_process_refuses_several_workers() -> None:
    with pytest.raises(WorkersError, match="--workers 1"):
        workers_for(Settings(workers=2, store="memory"))
    assert workers_for(Settings(workers=1, store="memory")) == 1
