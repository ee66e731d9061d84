"""Notebook widgets: `GraphInspector` and the live `TrainingMonitor`.

Contents: GraphInspector (inspector.py), the layered layout (layout.py), value summaries (summary.py),
TrainingMonitor (monitor.py) with its charts (charts.py), downsampling/smoothing (downsample.py)
and images panel (images.py).
"""

from .inspector import GraphInspector
from .monitor import TrainingMonitor

__all__ = ["GraphInspector", "TrainingMonitor"]
