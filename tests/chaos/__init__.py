"""Chaos runs: five real nodes on loopback, clients on every node, and a seeded schedule of
partitions, kill -9, SIGSTOP, clock skew and wiped nodes; then heal, converge and check the
invariants of DESIGN.md. `python -m tests.chaos --help` (or `make chaos`) runs it."""
