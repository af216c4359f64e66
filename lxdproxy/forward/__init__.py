"""asyncio data plane: listeners, stream relay (splice + copy), datagram relay, device runtime.

``from lxdproxy.forward import Forwarder`` (imported lazily, so ``lxdproxy.forward.udp.listener`` and
the relay modules stay importable on their own).
"""

from __future__ import annotations

from typing import Any

__all__ = ["Forwarder", "ForwarderStats"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from lxdproxy.forward import forwarder

        return getattr(forwarder, name)
    raise AttributeError(name)
