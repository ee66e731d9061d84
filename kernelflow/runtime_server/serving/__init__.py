"""The runtime server's serving layer: exported models: export, loading, the model manager, batching, the REST API."""
