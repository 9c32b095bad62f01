"""Crash tests: `kill -9` a node under load again and again (`python -m tests.crash`), and cut the
power under the SQLite store (a VFS that forgets every write not yet fsynced)."""
