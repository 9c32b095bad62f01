"""Deterministic simulation of a shareddb cluster: `make sim`, `python -m tests.sim --help`."""
