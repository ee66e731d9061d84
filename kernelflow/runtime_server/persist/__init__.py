"""The runtime server's persist layer: the state dir: record logs, atomic writes, layout, lock."""
