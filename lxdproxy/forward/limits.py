"""Defaults of the data plane's timeouts, in one place (DaemonConfig and the workers' flags
take theirs from here)."""

CONNECT_TIMEOUT = 10.0  # seconds to dial a proxy target (LXD dials with no bound: spec §9.9)
UDP_IDLE_TIMEOUT = 1800.0  # LXD: each datagram (either way) resets a 30-minute timer
