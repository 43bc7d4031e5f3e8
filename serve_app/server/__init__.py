"""I/O shell: the Starlette WebSocket app that wires the sans-I/O session core to a model gateway."""
