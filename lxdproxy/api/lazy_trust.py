"""The trust store of a daemon that serves no HTTPS, loaded on first use.

LXD keeps its trusted certificates whether or not it listens on the network: over the unix
socket ``lxc config trust list`` lists them and ``lxc config trust add`` stores one, for the day
the daemon is given an address. ``lxdproxy.api.tls`` needs ``cryptography`` (~14 MiB of the
control plane's RSS), so a daemon without ``--https`` only imports it when a certificate
request arrives.
"""

from __future__ import annotations

import os
from typing import Any


class LazyTrustStore:
    """Stands in for ``tls.TrustStore(state_dir)``, made on the first attribute access."""

    def __init__(self, state_dir: str | os.PathLike[str]) -> None:
        self._state_dir = state_dir
        self._store: Any = None

    def __getattr__(self, name: str) -> Any:
        if self._store is None:
            from lxdproxy.api import tls

            self._store = tls.TrustStore(self._state_dir)
        return getattr(self._store, name)
