"""Our own server processes: listening sockets and ports, liveness and stopping, status files."""
