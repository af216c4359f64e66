"""UDP session table: idle expiry, LRU bound, per-listener keys, driven by a fake clock."""

from __future__ import annotations

import pytest

from lxdproxy.forward.udp.sessions import DEFAULT_IDLE_TIMEOUT, SessionLookup, UdpSessionTable


def get_or_create(table, listener_id, client, factory):
    """What the UDP listener does per datagram: the client's session, touched, or a new one."""
    session = table.get(listener_id, client)
    if session is not None:
        table.touch(session)
        return SessionLookup(session, False, ())
    return table.add(listener_id, client, factory())


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def test_default_idle_timeout_is_lxds_30_minutes(clock) -> None:
    assert DEFAULT_IDLE_TIMEOUT == 1800.0
    assert UdpSessionTable(clock).idle_timeout == 1800.0


def test_get_or_create_then_reuse(clock) -> None:
    table: UdpSessionTable[str] = UdpSessionTable(clock)
    made: list[str] = []

    def factory() -> str:
        made.append("sock")
        return f"sock{len(made)}"

    session, created, evicted = get_or_create(table, "l1", ("198.18.0.2", 5000), factory)
    assert created and evicted == () and session.value == "sock1"
    assert session.listener_id == "l1" and session.client == ("198.18.0.2", 5000)
    clock.now += 5
    again = get_or_create(table, "l1", ("198.18.0.2", 5000), factory)
    assert again.session is session and not again.created
    assert session.last_seen == 1005.0 and session.created == 1000.0
    assert made == ["sock"]  # the factory ran once
    assert len(table) == 1 and ("l1", ("198.18.0.2", 5000)) in table


def test_key_includes_the_listener(clock) -> None:
    # LXD keys by client address only, so one client talking to two listen ports of a device
    # shares the first port's upstream (spec §4.4 bug). We keep them apart.
    table: UdpSessionTable[str] = UdpSessionTable(clock)
    a = get_or_create(table, "port-53", ("198.18.0.2", 5000), lambda: "a").session
    b = get_or_create(table, "port-54", ("198.18.0.2", 5000), lambda: "b").session
    assert a is not b and len(table) == 2


def test_expiry_after_idle_timeout_and_touch_resets(clock) -> None:
    table: UdpSessionTable[str] = UdpSessionTable(clock, idle_timeout=30)
    old = table.add("l", "c1", "v1").session
    clock.now += 10
    new = table.add("l", "c2", "v2").session
    assert table.next_expiry() == 1030.0
    clock.now += 19  # old idle 29 s
    assert table.expire() == []
    assert table.touch(old)  # a reply came back: timer restarts
    assert table.next_expiry() == 1040.0  # now `new` is the oldest
    clock.now += 11  # old idle 11 s, new idle 30 s
    assert table.expire() == [new]
    assert table.get("l", "c2") is None and table.get("l", "c1") is old
    assert not table.touch(new)  # reverse path of an expired session: "Connection expired"
    assert table.expire(now=clock.now + 30) == [old]
    assert len(table) == 0 and table.next_expiry() is None


def test_expire_returns_oldest_first(clock) -> None:
    table: UdpSessionTable[int] = UdpSessionTable(clock, idle_timeout=5)
    sessions = []
    for i in range(4):
        sessions.append(table.add("l", i, i).session)
        clock.now += 1
    clock.now += 10
    assert table.expire() == sessions


def test_lru_eviction_when_full(clock) -> None:
    table: UdpSessionTable[str] = UdpSessionTable(clock, max_sessions=2)
    a = get_or_create(table, "l", "a", lambda: "A").session
    b = get_or_create(table, "l", "b", lambda: "B").session
    clock.now += 1
    table.touch(a)  # b is now least recently used
    c, created, evicted = get_or_create(table, "l", "c", lambda: "C")
    assert created and evicted == (b,)
    assert [s.value for s in table] == ["A", "C"]
    # Re-use does not evict.
    assert get_or_create(table, "l", "a", lambda: "X").evicted == ()
    assert [s.value for s in table] == ["C", "A"]
    assert get_or_create(table, "l", "d", lambda: "D").evicted == (c,)


def test_factory_failure_leaves_the_table_alone(clock) -> None:
    table: UdpSessionTable[str] = UdpSessionTable(clock, max_sessions=1)
    kept = table.add("l", "a", "A").session

    def fails() -> str:
        raise OSError("connect failed")

    with pytest.raises(OSError):
        get_or_create(table, "l", "b", fails)
    assert list(table) == [kept]


def test_remove_clear_and_misuse(clock) -> None:
    table: UdpSessionTable[str] = UdpSessionTable(clock)
    s = table.add("l", "a", "A").session
    with pytest.raises(KeyError):
        table.add("l", "a", "again")
    assert table.remove(s) and not table.remove(s)
    # A stale session object never removes or touches its replacement.
    replacement = table.add("l", "a", "B").session
    assert not table.remove(s) and not table.touch(s)
    assert table.clear() == [replacement] and len(table) == 0
    with pytest.raises(ValueError):
        UdpSessionTable(clock, idle_timeout=0)
    with pytest.raises(ValueError):
        UdpSessionTable(clock, max_sessions=0)
