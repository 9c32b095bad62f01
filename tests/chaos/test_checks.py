"""The chaos checks catch what they claim to: each case below breaks one rule on made-up histories."""

from __future__ import annotations

from tests.chaos.checks import Final, Findings, Wipes, clock_problems, final_state_findings
from tests.chaos.cluster import Wipe
from tests.chaos.workload import Op, Outcome


def op(
    key: str,
    value: str | None,
    outcome: Outcome,
    version: str | None = None,
    *,
    workload: str = "set",
    at: float = 0.0,
    status: int = 0,
) -> Op:
    return Op(workload, 0, "n1", 0, key, value, False, at, at + 0.1, outcome, status, version)


V1, V2, V3 = "0000000000000001-n1", "0000000000000002-n1", "0000000000000003-n1"


def findings(history: list[Op], final: Final, wiped: Wipes | None = None) -> Findings:
    return final_state_findings(history, final, wiped or {})


def test_acknowledged_write_missing_or_older_is_lost() -> None:
    history = [op("a", "x", Outcome.OK, V1), op("h", "1", Outcome.OK, V1), op("h", "2", Outcome.OK, V2)]
    found = findings(history, {"h": ("1", V1)})
    assert len(found.lost) == 2
    assert not found.resurrected
    assert not found.unexpected


def test_unknown_and_failed_writes_may_be_absent() -> None:
    history = [op("a", "x", Outcome.UNKNOWN), op("b", "y", Outcome.FAIL)]
    found = findings(history, {"a": ("x", V1)})
    assert not found.lost
    assert not found.unexpected


def test_key_back_after_an_acknowledged_delete_is_resurrected() -> None:
    history = [
        op("d", "x", Outcome.OK, V1, workload="delete"),
        op("d", None, Outcome.OK, V2, workload="delete", at=1.0),
    ]
    found = findings(history, {"d": ("x", V1)})
    assert len(found.resurrected) == 1
    assert not findings(history, {}).resurrected


def test_value_nobody_wrote_a_failed_write_or_a_wrong_version_is_unexpected() -> None:
    history = [op("a", "x", Outcome.OK, V1), op("b", "y", Outcome.FAIL)]
    assert len(findings(history, {"a": ("z", V1)}).unexpected) == 1
    assert len(findings(history, {"a": ("x", V2)}).unexpected) == 1
    assert len(findings(history, {"a": ("x", V1), "b": ("y", V1)}).unexpected) == 1
    assert len(findings(history, {"a": ("x", V1), "c": ("?", V1)}).unexpected) == 1
    assert len(findings(history, {"a": ("x", "0000000000000001-n2")}).unexpected) == 1


def test_what_only_a_wiped_data_dir_acknowledged_may_be_gone() -> None:
    history = [
        op("a", "x", Outcome.OK, V1),
        op("d", "y", Outcome.OK, V1, workload="delete"),
        op("d", None, Outcome.OK, V2, workload="delete", at=1.0),
    ]
    found = findings(history, {"d": ("y", V1)}, {(0, 0): Wipe(0.5, frozenset({(1, 0)}))})
    assert found.lost == ["'a' is gone; it was acknowledged at 0000000000000001-n1, never deleted"]
    assert not found.resurrected
    # Held by a node that was wiped too: required only if that one passed it on before its wipe.
    wiped = {(0, 0): Wipe(0.5, frozenset({(1, 0)})), (1, 0): Wipe(9.0, frozenset())}
    assert not findings(history, {"d": ("y", V1)}, wiped).lost
    wiped[1, 0] = Wipe(9.0, frozenset({(2, 0)}))
    assert len(findings(history, {"d": ("y", V1)}, wiped).lost) == 1


def test_delete_answered_404_by_the_node_that_acknowledged_the_write_is_lost() -> None:
    history = [
        op("d", "x", Outcome.OK, V1, workload="delete"),
        op("d", None, Outcome.FAIL, workload="delete", at=1.0, status=404),
    ]
    assert len(findings(history, {"d": ("x", V1)}).lost) == 1


def test_version_below_one_acknowledged_before_it_was_sent_is_a_clock_going_back() -> None:
    assert not clock_problems([op("a", "x", Outcome.OK, V1), op("b", "y", Outcome.OK, V2, at=1.0)])
    assert clock_problems([op("a", "x", Outcome.OK, V3), op("b", "y", Outcome.OK, V2, at=1.0)])
    # Overlapping requests may take their versions in either order.
    assert not clock_problems([op("a", "x", Outcome.OK, V3), op("b", "y", Outcome.OK, V2, at=0.05)])


def test_key_written_again_after_its_delete_may_live_and_must_not_vanish() -> None:
    # A bounded key space (the soak) writes a deleted key again: that write wins, and is required.
    history = [
        op("d", "x", Outcome.OK, V1, workload="delete"),
        op("d", None, Outcome.OK, V2, workload="delete", at=1.0),
        op("d", "z", Outcome.OK, V3, workload="delete", at=2.0),
    ]
    assert findings(history, {"d": ("z", V3)}) == Findings()
    assert len(findings(history, {}).lost) == 1
    assert len(findings(history, {"d": ("x", V1)}).resurrected) == 1
