"""Replication: serving this node's changes feed and pulling every peer's (see DESIGN.md)."""
