"""The runtime server's net layer: the network side: TCP server, connections, serve()."""
