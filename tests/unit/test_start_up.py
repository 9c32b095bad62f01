"""What a node does once it serves: what start-up built leaves the garbage collector's walks."""

from __future__ import annotations

import gc

from shareddb.server import freeze_start_up


def test_what_start_up_built_is_frozen_out_of_the_collectors_walks() -> None:
    """The node process and each worker process call this before they serve (server.py, worker.py):
    a full collection then walks only what serving made, not every module and class."""
    frozen = gc.get_freeze_count()
    try:
        freeze_start_up()
        assert gc.get_freeze_count() - frozen > 1000
        assert len(gc.get_objects()) < 1000
    finally:
        gc.unfreeze()
