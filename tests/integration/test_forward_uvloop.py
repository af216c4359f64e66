"""A selection of the data-plane tests again, on uvloop (the daemon's loop when installed): the
relay uses only primitives both loops share (add_reader/add_writer, sock_connect, sock_sendall).

Each test runs in ``uvloop.run`` (a loop factory, not a global policy: the lab's pyroute2 calls
need plain asyncio loops in their own threads), with a Forwarder created on that loop.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from lxdproxy.forward import Forwarder
from tests.integration import (
    test_forward_datagram_pairs as dgram,
)
from tests.integration import (
    test_forward_load as load,
)
from tests.integration import (
    test_forward_stream_relay as relay,
)
from tests.integration import (
    test_forward_tcp as tcp,
)
from tests.integration import (
    test_forward_unix as unix,
)
from tests.integration.test_forward_load import many_fds  # noqa: F401
from tests.integration.test_forward_unix import open_dir  # noqa: F401

pytestmark = pytest.mark.lab


def on_uvloop(test: Callable[..., Any]) -> Callable[..., None]:
    sig = inspect.signature(test)
    wants_fwd = "fwd" in sig.parameters

    def wrapper(**kwargs: Any) -> None:
        async def main() -> None:
            assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
            if not wants_fwd:
                await test(**kwargs)
                return
            fwd = Forwarder(connect_timeout=5, udp_idle_timeout=30)
            try:
                await test(fwd=fwd, **kwargs)
            finally:
                await fwd.stop_all()

        uvloop.run(main())

    wrapper.__signature__ = sig.replace(  # type: ignore[attr-defined]
        parameters=[p for name, p in sig.parameters.items() if name != "fwd"])
    wrapper.__name__ = test.__name__
    wrapper.pytestmark = getattr(test, "pytestmark", [])  # type: ignore[attr-defined]
    return wrapper


test_relay_bulk_and_half_close = on_uvloop(relay.test_bulk_both_ways_then_half_close_answer_arrives)
test_relay_splice_fallback = on_uvloop(
    relay.test_splice_einval_falls_back_to_copy_without_losing_bytes)
test_relay_rights = on_uvloop(relay.test_rights_mode_carries_fds_and_closes_our_copies)
test_tcp_dual_stack = on_uvloop(tcp.test_wildcard_listen_is_dual_stack)
test_tcp_ranges = on_uvloop(tcp.test_port_ranges_map_to_the_right_backend)
test_tcp_half_close = on_uvloop(tcp.test_half_close_answer_after_eof_arrives)
test_unix_checklist_c = on_uvloop(unix.test_checklist_c_unix_to_unix)
test_unix_scm_rights = on_uvloop(unix.test_scm_rights_travel_through_unix_to_unix)
test_unix_security_ids = on_uvloop(
    unix.test_bind_instance_unix_listener_gets_instance_ids_and_security_ids_on_host)
test_udp_checklist_f = on_uvloop(dgram.test_checklist_f_udp_to_udp)
test_tcp_to_udp_checklist_h = on_uvloop(dgram.test_checklist_h_tcp_to_udp_reply_after_half_close)
test_thousand_connections = on_uvloop(
    load.test_thousand_concurrent_connections_then_fds_back_to_baseline)
