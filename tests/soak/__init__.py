"""The soak: a long, gentle chaos run on three nodes that also watches each node's memory."""
