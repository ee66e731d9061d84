"""The runtime server's training layer: server-side training: the fit loop, jobs, TensorBoard event files."""
