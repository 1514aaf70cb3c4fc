"""Our own server processes: listening sockets and ports, serving HTTP, liveness and stopping,
status files."""
