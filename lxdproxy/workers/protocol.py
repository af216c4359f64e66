"""The control protocol between the control plane and its workers: bytes in, messages out.

Pure (no I/O), h11-style: ``encode(envelope)`` makes one frame, ``FrameDecoder.feed(data)``
returns the envelopes completed so far. A frame is a 4-byte big-endian length and a JSON object
``{"v": VERSION, "id": n, "kind": k, "fds": n, "body": {...}}``. File descriptors (listening
sockets) travel beside the frame over SCM_RIGHTS; ``fds`` says how many belong to it. Never
pickle: a worker may run another version of the code than the control plane (that is what
``reload`` is for), and both sides must be able to say so rather than misread each other.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, dataclass_transform

from lxdproxy.netns.namespaces import Namespaces

PROTOCOL_VERSION = 1
MAX_FRAME = 16 * 1024 * 1024  # a list of 100k devices fits; a garbage length does not
_LENGTH = struct.Struct("!I")

DeviceKey = tuple[str, str]
# (st_dev, st_ino) of the net, mnt and user namespace of one side; None = not given.
NsIdentity = tuple[tuple[int, int] | None, tuple[int, int] | None, tuple[int, int] | None]


class ProtocolError(Exception):
    """The peer sent something this side cannot read (the peer's fault)."""


class VersionMismatch(ProtocolError):
    def __init__(self, ours: int, theirs: Any) -> None:
        super().__init__(f"worker protocol version mismatch: this side speaks {ours}, "
                         f"the peer sent {theirs}")
        self.ours = ours
        self.theirs = theirs


# -- value types ----------------------------------------------------------------------------

@dataclass(frozen=True)
class DeviceSpec:
    """One device as a worker runs it: enough to rebuild it anywhere.

    ``config`` is the raw LXD string map (the worker validates it again with
    ``validate_proxy_device``, the one gate). A namespace whose ``net`` is the sender's own is
    sent as ``null`` and read as the receiver's own: a worker outlives the control plane, whose
    ``/proc/<pid>/ns/net`` path dies with it. ``identity`` (listen side then connect side) is
    what "the same namespaces" means across restarts, since paths name PIDs.
    ``host_socket`` is the unix socket file the control plane bound for the device (path, and
    its (st_dev, st_ino) as seen in the listen side's mount namespace), removed on stop only if
    it is still that file.
    """

    key: DeviceKey
    config: Mapping[str, str]
    listen_ns: Namespaces | None
    connect_ns: Namespaces | None
    instance_name: str
    instance_type: str = "container"
    identity: tuple[NsIdentity, NsIdentity] = ((None, None, None), (None, None, None))
    host_socket: tuple[str, tuple[int, int] | None] | None = None

    def same_device(self, other: DeviceSpec) -> bool:
        """The same thing running: same config, instance and namespaces (paths may differ)."""
        return (self.key == other.key and dict(self.config) == dict(other.config)
                and self.instance_name == other.instance_name
                and self.instance_type == other.instance_type and self.identity == other.identity)


# -- messages -------------------------------------------------------------------------------

@dataclass_transform(frozen_default=True)
class _Message:
    """A message names its wire kind in its bases (``class Stats(_Message, kind="stats")``)
    and is made a frozen dataclass here: one line says both what it is and how it travels."""

    kind: ClassVar[str]

    def __init_subclass__(cls, *, kind: str, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.kind = kind
        dataclass(frozen=True)(cls)


class Hello(_Message, kind="hello"):
    """First message each way: who is there. A worker answers with its own: ``index`` (its
    slot in the pool, which decides UDP ownership) and ``draining`` (it stopped accepting)."""

    pid: int
    generation: int
    version: int = PROTOCOL_VERSION
    index: int = -1
    draining: bool = False


class Start(_Message, kind="start"):
    """Start a device, or update it if the key runs. ``fds`` listening sockets come with it, one
    per listener in plan order, then ``udp_maps`` reuseport maps (a spread UDP device: each
    worker reads its own socket per listener; the maps travel so that a control plane can get
    them back, workers/udp_groups.py). ``udp_owner``: this worker reads the UDP listeners (one
    owner per device keeps a client's datagrams, hence its session, in one worker)."""

    spec: DeviceSpec
    udp_owner: bool = True
    udp_maps: int = 0


class Stop(_Message, kind="stop"):
    """Stop a device; the reply says whether it was running."""

    key: DeviceKey


class ListDevices(_Message, kind="list"):
    """The devices a worker runs: each spec, whether it owns the UDP listeners, and how many
    reuseport maps it holds (``udp_maps``, > 0: a spread device)."""


class Stats(_Message, kind="stats"):
    """A worker's counters, overall and per device."""


class Drain(_Message, kind="drain"):
    """Stop accepting everywhere; exit once every connection ended or ``timeout`` passed."""

    timeout: float | None = None


class Shutdown(_Message, kind="shutdown"):
    """Stop every device and exit once the reply is sent (``Drain`` waits for connections)."""


class Listeners(_Message, kind="listeners"):
    """Ask for a device's listening sockets (they come back as the reply's fds, followed by
    its reuseport maps; the reply's result says how many of those: ``{"udp_maps": n}``)."""

    key: DeviceKey


class Reply(_Message, kind="reply"):
    """The answer to request ``id``. ``error`` is the user-facing text; ``start_error`` marks a
    device that could not start (LXD's DeviceStartError) as opposed to a worker failure."""

    ok: bool = True
    error: str | None = None
    start_error: bool = False
    result: Any = None


Message = Hello | Start | Stop | ListDevices | Stats | Drain | Shutdown | Listeners | Reply


@dataclass(frozen=True)
class Envelope:
    id: int
    message: Message
    fds: int = 0
    version: int = field(default=PROTOCOL_VERSION)


# -- encoding -------------------------------------------------------------------------------

def _ns_to_json(ns: Namespaces | None) -> dict[str, Any] | None:
    if ns is None:
        return None
    return {"net": ns.net, "mnt": ns.mnt, "user": ns.user, "pid": ns.pid}


def _identity_to_json(ident: NsIdentity) -> list[Any]:
    return [list(i) if i is not None else None for i in ident]


def _spec_to_json(spec: DeviceSpec) -> dict[str, Any]:
    hs = spec.host_socket
    return {
        "key": list(spec.key),
        "config": dict(spec.config),
        "listen_ns": _ns_to_json(spec.listen_ns),
        "connect_ns": _ns_to_json(spec.connect_ns),
        "instance_name": spec.instance_name,
        "instance_type": spec.instance_type,
        "identity": [_identity_to_json(side) for side in spec.identity],
        "host_socket": None if hs is None else [hs[0], list(hs[1]) if hs[1] else None],
    }


def spec_to_json(spec: DeviceSpec) -> dict[str, Any]:
    """A spec as JSON (for replies such as ``list``)."""
    return _spec_to_json(spec)


def _body(msg: Message) -> dict[str, Any]:
    if isinstance(msg, Hello):
        return {"pid": msg.pid, "generation": msg.generation, "version": msg.version,
                "index": msg.index, "draining": msg.draining}
    if isinstance(msg, Start):
        return {"spec": _spec_to_json(msg.spec), "udp_owner": msg.udp_owner,
                "udp_maps": msg.udp_maps}
    if isinstance(msg, Stop | Listeners):
        return {"key": list(msg.key)}
    if isinstance(msg, Drain):
        return {"timeout": msg.timeout}
    if isinstance(msg, Reply):
        return {"ok": msg.ok, "error": msg.error, "start_error": msg.start_error,
                "result": msg.result}
    return {}


def encode(env: Envelope) -> bytes:
    """One frame. Raises ValueError for a result that is not JSON (a bug on this side)."""
    doc = {"v": env.version, "id": env.id, "kind": env.message.kind, "fds": env.fds,
           "body": _body(env.message)}
    data = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if len(data) > MAX_FRAME:
        raise ValueError(f"frame of {len(data)} bytes is over the {MAX_FRAME} byte limit")
    return _LENGTH.pack(len(data)) + data


# -- decoding -------------------------------------------------------------------------------

def _want(doc: Mapping[str, Any], name: str, kind: type | tuple[type, ...],
          optional: bool = False) -> Any:
    value = doc.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) and kind in (int, float, (int, float)):
        raise ProtocolError(f"field {name!r}: expected a number")
    if not isinstance(value, kind):
        raise ProtocolError(f"field {name!r}: expected {_type_name(kind)}, got {value!r:.60}")
    return value


def _type_name(kind: type | tuple[type, ...]) -> str:
    if isinstance(kind, tuple):
        return " or ".join(k.__name__ for k in kind)
    return kind.__name__


def _key(value: Any) -> DeviceKey:
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, str) for v in value)):
        raise ProtocolError(f"field 'key': expected [instance, device], got {value!r:.60}")
    return (value[0], value[1])


def _ns(value: Any, name: str) -> Namespaces | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ProtocolError(f"field {name!r}: expected an object")
    net = _want(value, "net", str)
    mnt = _want(value, "mnt", str, optional=True)
    user = _want(value, "user", str, optional=True)
    pid = _want(value, "pid", int, optional=True)
    return Namespaces(net=net, mnt=mnt, user=user, pid=pid)


def _pair(value: Any, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if (not isinstance(value, list) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise ProtocolError(f"field {name!r}: expected [st_dev, st_ino]")
    return (value[0], value[1])


def _identity(value: Any) -> tuple[NsIdentity, NsIdentity]:
    if not isinstance(value, list) or len(value) != 2:
        raise ProtocolError("field 'identity': expected [listen, connect]")
    sides = []
    for side in value:
        if not isinstance(side, list) or len(side) != 3:
            raise ProtocolError("field 'identity': expected [net, mnt, user] per side")
        sides.append((_pair(side[0], "identity"), _pair(side[1], "identity"),
                      _pair(side[2], "identity")))
    return (sides[0], sides[1])


def spec_from_json(doc: Any) -> DeviceSpec:
    if not isinstance(doc, dict):
        raise ProtocolError("field 'spec': expected an object")
    config = _want(doc, "config", dict)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in config.items()):
        raise ProtocolError("field 'config': device values are strings")
    hs = doc.get("host_socket")
    host_socket = None
    if hs is not None:
        if not isinstance(hs, list) or len(hs) != 2 or not isinstance(hs[0], str):
            raise ProtocolError("field 'host_socket': expected [path, identity]")
        host_socket = (hs[0], _pair(hs[1], "host_socket"))
    return DeviceSpec(
        key=_key(doc.get("key")),
        config=config,
        listen_ns=_ns(doc.get("listen_ns"), "listen_ns"),
        connect_ns=_ns(doc.get("connect_ns"), "connect_ns"),
        instance_name=_want(doc, "instance_name", str),
        instance_type=_want(doc, "instance_type", str),
        identity=_identity(doc.get("identity")),
        host_socket=host_socket,
    )


def _message(kind: str, body: Mapping[str, Any]) -> Message:
    if kind == "hello":
        return Hello(pid=_want(body, "pid", int), generation=_want(body, "generation", int),
                     version=_want(body, "version", int), index=_want(body, "index", int),
                     draining=_want(body, "draining", bool))
    if kind == "start":
        maps = _want(body, "udp_maps", int, optional=True)  # absent from older control planes
        if maps is not None and maps < 0:
            raise ProtocolError("field 'udp_maps': negative")
        return Start(spec=spec_from_json(body.get("spec")),
                     udp_owner=_want(body, "udp_owner", bool), udp_maps=maps or 0)
    if kind == "stop":
        return Stop(key=_key(body.get("key")))
    if kind == "listeners":
        return Listeners(key=_key(body.get("key")))
    if kind == "list":
        return ListDevices()
    if kind == "stats":
        return Stats()
    if kind == "drain":
        timeout = _want(body, "timeout", (int, float), optional=True)
        return Drain(timeout=float(timeout) if timeout is not None else None)
    if kind == "shutdown":
        return Shutdown()
    if kind == "reply":
        return Reply(ok=_want(body, "ok", bool), error=_want(body, "error", str, optional=True),
                     start_error=_want(body, "start_error", bool), result=body.get("result"))
    raise ProtocolError(f"unknown message kind {kind!r:.40}")


def decode_frame(data: bytes) -> Envelope:
    """One frame's JSON (without the length prefix)."""
    try:
        doc = json.loads(data)
    except (UnicodeDecodeError, ValueError) as exc:
        raise ProtocolError(f"frame is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ProtocolError("frame is not a JSON object")
    version = doc.get("v")
    if version != PROTOCOL_VERSION:
        raise VersionMismatch(PROTOCOL_VERSION, version)
    ident = _want(doc, "id", int)
    fds = _want(doc, "fds", int)
    if fds < 0:
        raise ProtocolError("field 'fds': negative")
    body = doc.get("body")
    if not isinstance(body, dict):
        raise ProtocolError("field 'body': expected an object")
    return Envelope(id=ident, message=_message(_want(doc, "kind", str), body), fds=fds)


class FrameDecoder:
    """Incremental: feed bytes as they come, get whole envelopes. Errors are sticky: after one,
    the stream is out of step and every later call raises the same error."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._error: ProtocolError | None = None

    def feed(self, data: bytes) -> list[Envelope]:
        if self._error is not None:
            raise self._error
        self._buf += data
        out: list[Envelope] = []
        try:
            while len(self._buf) >= _LENGTH.size:
                (length,) = _LENGTH.unpack_from(self._buf)
                if length > MAX_FRAME:
                    raise ProtocolError(f"frame of {length} bytes is over the {MAX_FRAME} "
                                        "byte limit")
                if len(self._buf) < _LENGTH.size + length:
                    break
                frame = bytes(self._buf[_LENGTH.size:_LENGTH.size + length])
                del self._buf[:_LENGTH.size + length]
                out.append(decode_frame(frame))
        except ProtocolError as exc:
            self._error = exc
            raise
        return out

    @property
    def pending(self) -> int:
        """Bytes of an incomplete frame still buffered."""
        return len(self._buf)
