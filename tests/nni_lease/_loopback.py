"""Loopback helpers shared by the NNI manager tests: IPv6 availability and free ports (127.0.0.1 only)."""

from __future__ import annotations

import socket

import pytest

from nni_lease.runtime._manager import PortInUseError, check_port_free


def has_ipv6() -> bool:
    """Whether this machine can bind the IPv6 loopback address."""
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


needs_ipv6 = pytest.mark.skipif(not has_ipv6(), reason="no IPv6 loopback on this machine")


def free_port() -> int:
    """A port free on every address (IPv4 and IPv6) whose successor is free too (remote-like services use it)."""
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port >= 65535:
            continue
        try:
            check_port_free(port)
            check_port_free(port + 1)
            return port
        except PortInUseError:
            continue
    raise RuntimeError("no free port found")
