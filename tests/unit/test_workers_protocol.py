"""The control protocol between the planes, from bytes alone."""

from __future__ import annotations

import json
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lxdproxy.netns.namespaces import Namespaces
from lxdproxy.workers.protocol import (
    MAX_FRAME,
    PROTOCOL_VERSION,
    DeviceSpec,
    Drain,
    Envelope,
    FrameDecoder,
    Hello,
    ListDevices,
    Listeners,
    ProtocolError,
    Reply,
    Shutdown,
    Start,
    Stats,
    Stop,
    VersionMismatch,
    encode,
)

text = st.text(max_size=20)
keys = st.tuples(text, text)
pairs = st.none() | st.tuples(st.integers(0, 2**63), st.integers(0, 2**63))
namespaces = st.none() | st.builds(
    Namespaces, net=text, mnt=st.none() | text, user=st.none() | text,
    pid=st.none() | st.integers(1, 2**22))
specs = st.builds(
    DeviceSpec,
    key=keys,
    config=st.dictionaries(text, text, max_size=6),
    listen_ns=namespaces,
    connect_ns=namespaces,
    instance_name=text,
    instance_type=st.sampled_from(["container", "virtual-machine"]),
    identity=st.tuples(st.tuples(pairs, pairs, pairs), st.tuples(pairs, pairs, pairs)),
    host_socket=st.none() | st.tuples(text, pairs),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**53, 2**53) | text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(text, inner, max_size=4),
    max_leaves=10)
messages = st.one_of(
    st.builds(Hello, pid=st.integers(0, 2**22), generation=st.integers(0, 1000),
              index=st.integers(-1, 64), draining=st.booleans()),
    st.builds(Start, spec=specs, udp_owner=st.booleans(), udp_maps=st.integers(0, 64)),
    st.builds(Stop, key=keys),
    st.builds(Listeners, key=keys),
    st.just(ListDevices()),
    st.just(Stats()),
    st.builds(Drain, timeout=st.none() | st.floats(0, 1e6)),
    st.just(Shutdown()),
    st.builds(Reply, ok=st.booleans(), error=st.none() | text, start_error=st.booleans(),
              result=json_values),
)
envelopes = st.builds(Envelope, id=st.integers(0, 2**31), message=messages,
                      fds=st.integers(0, 253))


def _frame(doc: object) -> bytes:
    data = json.dumps(doc).encode()
    return struct.pack("!I", len(data)) + data


@given(envelopes)
def test_every_message_round_trips(env: Envelope) -> None:
    assert FrameDecoder().feed(encode(env)) == [env]


@given(st.lists(envelopes, min_size=1, max_size=5), st.data())
def test_frames_split_anywhere_decode_the_same(envs: list[Envelope], data: st.DataObject) -> None:
    stream = b"".join(encode(e) for e in envs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    decoder, out, start = FrameDecoder(), [], 0
    for cut in [*cuts, len(stream)]:
        out += decoder.feed(stream[start:cut])
        start = cut
    assert out == envs
    assert decoder.pending == 0


def test_a_start_carries_the_raw_lxd_config_and_namespace_paths() -> None:
    spec = DeviceSpec(key=("c1", "web"), config={"type": "proxy", "listen": "tcp:0.0.0.0:80",
                                                  "connect": "tcp:127.0.0.1:8080"},
                      listen_ns=None, connect_ns=Namespaces(net="/proc/42/ns/net",
                                                            mnt="/proc/42/ns/mnt", pid=42),
                      instance_name="c1", identity=((None, None, None), ((4, 1), (4, 2), None)))
    frame = encode(Envelope(7, Start(spec), fds=1))
    doc = json.loads(frame[4:])
    assert doc["v"] == PROTOCOL_VERSION and doc["kind"] == "start" and doc["fds"] == 1
    assert doc["body"]["spec"]["config"]["listen"] == "tcp:0.0.0.0:80"
    assert doc["body"]["spec"]["connect_ns"] == {"net": "/proc/42/ns/net",
                                                 "mnt": "/proc/42/ns/mnt", "user": None,
                                                 "pid": 42}
    assert doc["body"]["spec"]["listen_ns"] is None


def test_another_version_is_an_error_naming_both() -> None:
    frame = _frame({"v": 99, "id": 1, "kind": "stats", "fds": 0, "body": {}})
    with pytest.raises(VersionMismatch) as info:
        FrameDecoder().feed(frame)
    assert str(info.value) == (f"worker protocol version mismatch: this side speaks "
                               f"{PROTOCOL_VERSION}, the peer sent 99")


def test_errors_are_sticky() -> None:
    decoder = FrameDecoder()
    with pytest.raises(ProtocolError):
        decoder.feed(_frame({"v": PROTOCOL_VERSION, "id": 1, "kind": "nope", "fds": 0,
                             "body": {}}))
    with pytest.raises(ProtocolError, match="unknown message kind 'nope'"):
        decoder.feed(encode(Envelope(2, Stats())))


@pytest.mark.parametrize(("doc", "message"), [
    ([1, 2], "not a JSON object"),
    ({"v": PROTOCOL_VERSION, "id": "x", "kind": "stats", "fds": 0, "body": {}},
     "field 'id': expected int"),
    ({"v": PROTOCOL_VERSION, "id": 1, "kind": "stats", "fds": -1, "body": {}},
     "field 'fds': negative"),
    ({"v": PROTOCOL_VERSION, "id": 1, "kind": "stop", "fds": 0, "body": {"key": ["a"]}},
     "expected \\[instance, device\\]"),
    ({"v": PROTOCOL_VERSION, "id": 1, "kind": "hello", "fds": 0,
      "body": {"pid": True, "generation": 1, "version": 1, "index": 0, "draining": False}},
     "field 'pid': expected a number"),
    ({"v": PROTOCOL_VERSION, "id": 1, "kind": "start", "fds": 0,
      "body": {"udp_owner": True, "spec": {"key": ["a", "b"], "config": {"listen": 80},
                                           "instance_name": "a", "instance_type": "container",
                                           "identity": [[None] * 3, [None] * 3]}}},
     "device values are strings"),
    ({"v": PROTOCOL_VERSION, "id": 1, "kind": "start", "fds": 0,
      "body": {"udp_owner": True, "udp_maps": -1,
               "spec": {"key": ["a", "b"], "config": {}, "instance_name": "a",
                        "instance_type": "container", "identity": [[None] * 3, [None] * 3]}}},
     "field 'udp_maps': negative"),
])
def test_malformed_frames_say_what_is_wrong(doc: object, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        FrameDecoder().feed(_frame(doc))


def test_not_json_and_oversized_frames_are_refused() -> None:
    with pytest.raises(ProtocolError, match="not JSON"):
        FrameDecoder().feed(struct.pack("!I", 3) + b"\xff\xfe{")
    with pytest.raises(ProtocolError, match="over the"):
        FrameDecoder().feed(struct.pack("!I", MAX_FRAME + 1))


def test_pickle_is_never_involved() -> None:
    # A frame is JSON text: anything pickle-shaped is refused as not JSON.
    import pickle

    payload = pickle.dumps({"v": PROTOCOL_VERSION})
    with pytest.raises(ProtocolError, match="not JSON"):
        FrameDecoder().feed(struct.pack("!I", len(payload)) + payload)


def test_a_start_from_a_control_plane_before_the_udp_spread_carries_no_maps() -> None:
    # udp_maps is absent from older control planes' frames: no maps, not an error.
    body = {"udp_owner": False, "spec": {"key": ["a", "b"], "config": {}, "instance_name": "a",
                                         "instance_type": "container",
                                         "identity": [[None] * 3, [None] * 3]}}
    (env,) = FrameDecoder().feed(_frame({"v": PROTOCOL_VERSION, "id": 1, "kind": "start",
                                         "fds": 0, "body": body}))
    assert isinstance(env.message, Start)
    assert env.message.udp_maps == 0 and env.message.udp_owner is False
