"""Playbook tests for the relay's decisions: events in, commands out, no sockets."""

from __future__ import annotations

import pytest

from lxdproxy.forward.relay_state import CloseAll, DirectionState, RelayState, ShutdownWrite, Side


def test_eof_with_empty_buffer_finishes_and_half_closes_the_other_side() -> None:
    relay = RelayState()
    assert relay.direction(Side.CLIENT).read_eof() is True
    assert relay.finished(Side.CLIENT) == [ShutdownWrite(Side.TARGET)]
    assert not relay.closed


def test_eof_waits_for_buffered_bytes_before_finishing() -> None:
    d = DirectionState(Side.CLIENT)
    assert d.read(10)
    assert d.read_eof() is False  # 10 bytes still to deliver: no shutdown yet
    assert not d.want_read() and d.want_write()
    assert d.wrote(4) is False
    assert d.wrote(6) is True
    assert d.finished and not d.want_write()


def test_both_directions_finished_closes_once() -> None:
    relay = RelayState()
    relay.direction(Side.CLIENT).read_eof()
    assert relay.finished(Side.CLIENT) == [ShutdownWrite(Side.TARGET)]
    relay.direction(Side.TARGET).read_eof()
    assert relay.finished(Side.TARGET) == [
        ShutdownWrite(Side.CLIENT),
        CloseAll("both directions finished"),
    ]
    assert relay.closed
    assert relay.finished(Side.TARGET) == []
    assert relay.error(Side.CLIENT, "late") == []


def test_error_closes_everything_without_half_close() -> None:
    relay = RelayState()
    assert relay.error(Side.TARGET, "Connection reset by peer") == [
        CloseAll("target: Connection reset by peer")
    ]
    assert relay.abort("stopped") == []


def test_abort() -> None:
    relay = RelayState()
    assert relay.abort("device stopped") == [CloseAll("device stopped")]
    assert relay.closed


def test_read_stops_while_the_buffer_holds_data() -> None:
    d = DirectionState(Side.TARGET)
    assert d.destination is Side.CLIENT
    assert d.want_read() and not d.want_write()
    d.read(1)
    assert not d.want_read()
    d.wrote(1)
    assert d.want_read()


def test_impossible_events_are_refused() -> None:
    d = DirectionState(Side.CLIENT)
    with pytest.raises(ValueError):
        d.read(0)
    d.read(3)
    with pytest.raises(ValueError):
        d.wrote(4)


def test_a_windowed_buffer_reads_while_it_has_room() -> None:
    # A pipe: reads go on while the destination drains, up to the window (not stop-and-wait).
    d = DirectionState(Side.CLIENT, window=100)
    assert d.want_read() and d.room() == 100
    d.read(60)
    assert d.want_read() and d.want_write() and d.room() == 40
    d.read(40)
    assert not d.want_read()  # full: back-pressure on the source
    d.wrote(1)
    assert d.want_read() and d.room() == 1


def test_a_copy_buffer_reads_only_when_empty() -> None:
    d = DirectionState(Side.CLIENT)  # window 0: the buffer is reused by the next read
    d.read(1)
    assert not d.want_read()
    d.wrote(1)
    assert d.want_read()


def test_a_stalled_read_waits_for_a_write_that_makes_room() -> None:
    d = DirectionState(Side.TARGET, window=100)
    d.read(10)
    d.stall()  # the pipe ran out of slots before bytes
    assert not d.want_read() and d.want_write()
    d.wrote(0)
    assert not d.want_read()  # nothing left the pipe: still no room
    d.wrote(5)
    assert d.want_read()


def test_an_empty_buffer_cannot_stall() -> None:
    with pytest.raises(ValueError):
        DirectionState(Side.CLIENT, window=100).stall()


def test_eof_stops_reading_even_with_room() -> None:
    d = DirectionState(Side.CLIENT, window=100)
    d.read(10)
    assert d.read_eof() is False
    assert not d.want_read() and d.want_write()
