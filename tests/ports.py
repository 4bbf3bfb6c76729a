"""A free TCP port on loopback for the servers the tests start (shared by the test files, as ``foreign_models`` is)."""

import socket


def free_port() -> int:
    """A port nothing listens on at 127.0.0.1 now (the OS picks it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
