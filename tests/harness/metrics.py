"""Reading a node's GET /metrics with prometheus-client's own parser, as Prometheus would."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families


def samples(text: str) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Every sample by name, then by its labels (sorted (name, value) pairs)."""
    found: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = tuple(sorted(sample.labels.items()))
            found.setdefault(sample.name, {})[labels] = sample.value
    return found


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample, None when the exposition has no such sample."""
    return samples(text).get(name, {}).get(tuple(sorted(labels.items())))


def by_label(text: str, name: str, label: str) -> dict[str, float]:
    """The samples of `name` keyed by the value of their one label `label`."""
    return {dict(key)[label]: value for key, value in samples(text).get(name, {}).items()}
