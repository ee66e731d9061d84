"""Notebook widgets: `GraphInspector` (the training monitor comes with issue #5).

Contents: GraphInspector (inspector.py), the layered layout (layout.py), value summaries (summary.py).
"""

from .inspector import GraphInspector

__all__ = ["GraphInspector"]
