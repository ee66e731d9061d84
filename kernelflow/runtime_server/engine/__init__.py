"""The runtime server's engine layer: devices, graph sessions, the executor and its plan cache, value summaries."""
