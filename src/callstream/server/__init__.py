"""The HTTP and WebSocket edge: the only layer that touches sockets."""
