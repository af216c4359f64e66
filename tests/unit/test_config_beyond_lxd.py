"""Deliberate differences from LXD: start-time failures caught at validation, and extensions."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lxdproxy.config import validate_proxy_device
from lxdproxy.config.model import InstanceType, ProxyDevice, ProxyProtocol
from lxdproxy.errors import ConfigError

NAT_OK = {"listen": "tcp:127.0.0.1:1234", "connect": "tcp:192.0.2.10:1234", "nat": "true"}


def error_of(config: dict, **kw: object) -> str:
    with pytest.raises(ConfigError) as info:
        validate_proxy_device(config, **kw)  # type: ignore[arg-type]
    return info.value.message


def opt(key: str, inner: str) -> str:
    return f'Invalid value for device option "{key}": {inner}'


@pytest.mark.parametrize("connect", ["tcp:1.2.3.4:80", "unix:/s", "unix:@s"])
def test_udp_to_non_udp(connect: str) -> None:
    config = {"listen": "udp:1.2.3.4:53", "connect": connect}
    assert error_of(config) == "Proxying from udp to non-udp protocol is not supported"


@pytest.mark.parametrize("listen", ["udp:1.2.3.4:53", "tcp:1.2.3.4:53", "unix:/a", "unix:@a"])
def test_working_protocol_pairs(listen: str) -> None:
    validate_proxy_device({"listen": listen, "connect": "udp:1.2.3.4:53"})


def test_listen_more_than_connect_more_than_one() -> None:
    config = {"listen": "tcp:1.2.3.4:1-3", "connect": "tcp:1.2.3.4:5-6"}
    assert error_of(config) == "Invalid port range"
    nat = NAT_OK | {"listen": "tcp:127.0.0.1:1-3", "connect": "tcp:192.0.2.10:5-6"}
    assert error_of(nat) == "Mismatch between listen port(s) and target port(s) count"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"listen": "tcp:1.2.3.4:70000", "connect": "tcp:1.2.3.4:80"},
            opt("listen", 'Invalid port "70000": must be between 1 and 65535'),
        ),
        (
            {"listen": "tcp:1.2.3.4:0", "connect": "tcp:1.2.3.4:80"},
            opt("listen", 'Invalid port "0": must be between 1 and 65535'),
        ),
        (
            {"listen": "tcp:1.2.3.4:65530-65536", "connect": "tcp:1.2.3.4:80"},
            opt("listen", 'Invalid port "65536": must be between 1 and 65535'),
        ),
        (
            {"listen": "tcp:1.2.3.4:80", "connect": "tcp:1.2.3.4:0"},
            opt("connect", 'Invalid port "0": must be between 1 and 65535'),
        ),
        (
            {"listen": "unix:/a", "connect": "udp:1.2.3.4:99999"},
            opt("connect", 'Invalid port "99999": must be between 1 and 65535'),
        ),
        (
            {"listen": "tcp:1.2.3.4:80,81,80", "connect": "tcp:1.2.3.4:80"},
            opt("listen", "Duplicate listen port 80"),
        ),
        (
            {"listen": "tcp:1.2.3.4:80-90,85", "connect": "tcp:1.2.3.4:80"},
            opt("listen", "Duplicate listen port 85"),
        ),
        (
            {"listen": "unix:/a\x00b", "connect": "tcp:1.2.3.4:80"},
            opt("listen", "Unix socket path contains a NUL byte"),
        ),
        (
            {"listen": "tcp:1.2.3.4:1", "connect": "unix:/" + "x" * 107},
            opt("connect", f'Unix socket address "/{"x" * 107}" is too long (at most 107 bytes)'),
        ),
    ],
)
def test_start_time_failures_rejected(config: dict, message: str) -> None:
    assert error_of(config) == message


def test_limits_that_pass() -> None:
    validate_proxy_device({"listen": "tcp:1.2.3.4:1-65535", "connect": "tcp:1.2.3.4:80"})
    validate_proxy_device({"listen": "unix:/" + "x" * 106, "connect": "unix:@" + "y" * 107})
    # Duplicate *connect* ports are fine: several listen ports may share a target.
    validate_proxy_device({"listen": "tcp:1.2.3.4:1,2", "connect": "tcp:1.2.3.4:80,80"})


def test_lxd_messages_win_over_ours() -> None:
    # LXD rejects this config with its per-key message; our port bound must not pre-empt it.
    config = {"listen": "tcp:1.2.3.4:70000", "connect": "tcp:1.2.3.4:80", "foo": "x"}
    assert error_of(config) == 'Invalid device option "foo"'


@pytest.mark.parametrize("value", ["true", "yes", "on", "1", "TRUE"])
def test_every_true_value_sends_v1(value: str) -> None:
    config = {"listen": "tcp:1.2.3.4:80", "connect": "tcp:1.2.3.4:80", "proxy_protocol": value}
    assert validate_proxy_device(config).proxy_protocol is ProxyProtocol.V1


# ---- NAT quirks -------------------------------------------------------------------------------


def test_nat_empty_listen_host_is_a_wildcard() -> None:
    config = NAT_OK | {"listen": "tcp::80", "connect": "tcp:[fd42::10]:80"}
    assert error_of(config) == 'Cannot listen on wildcard address "" when in nat mode'
    with_wildcard = config | {"user.lxdproxy.nat_wildcard": "true"}
    assert error_of(with_wildcard) == (
        'Cannot use an empty listen address in nat mode (use "0.0.0.0" or "::")'
    )


def test_nat_empty_connect_host() -> None:
    config = NAT_OK | {"listen": "tcp:[::1]:80", "connect": "tcp::80"}
    assert error_of(config).startswith("Cannot use an empty connect address in nat mode")


@pytest.mark.parametrize(
    ("listen", "connect", "bad", "plain"),
    [
        ("tcp:[::ffff:127.0.0.1]:80", "tcp:192.0.2.10:80", "::ffff:127.0.0.1", "127.0.0.1"),
        ("tcp:127.0.0.1:80", "tcp:[::ffff:c000:020a]:80", "::ffff:c000:020a", "192.0.2.10"),
    ],
)
def test_nat_ipv4_mapped(listen: str, connect: str, bad: str, plain: str) -> None:
    config = NAT_OK | {"listen": listen, "connect": connect}
    assert error_of(config) == (
        f'Cannot use IPv4-mapped address "{bad}" in nat mode (use "{plain}")'
    )


def test_ipv4_mapped_fine_without_nat() -> None:
    validate_proxy_device({"listen": "tcp:[::ffff:127.0.0.1]:80", "connect": "tcp:1.2.3.4:80"})


# ---- extensions -------------------------------------------------------------------------------


def test_nat_wildcard() -> None:
    config = NAT_OK | {"listen": "tcp:0.0.0.0:80", "user.lxdproxy.nat_wildcard": "yes"}
    device = validate_proxy_device(config)
    assert device.nat_wildcard and device.nat
    v6 = config | {"listen": "tcp:[::]:80", "connect": "tcp:[fd42::10]:80"}
    assert validate_proxy_device(v6).nat_wildcard
    # Families must still match.
    assert error_of(config | {"connect": "tcp:[fd42::10]:80"}) == (
        "Cannot mix IP versions between listen and connect in nat mode"
    )
    assert error_of(config | {"user.lxdproxy.nat_wildcard": "sure"}) == (
        'Cannot listen on wildcard address "0.0.0.0" when in nat mode'
    )
    assert error_of(NAT_OK | {"user.lxdproxy.nat_wildcard": "sure"}) == opt(
        "user.lxdproxy.nat_wildcard", 'Invalid value for a boolean "sure"'
    )


@pytest.mark.parametrize("connect", ["tcp:1.2.3.4:80", "unix:/s", "unix:@s"])
def test_proxy_protocol_v2_stream(connect: str) -> None:
    config = {"listen": "tcp:1.2.3.4:80", "connect": connect, "user.lxdproxy.proxy_protocol": "v2"}
    assert validate_proxy_device(config).proxy_protocol is ProxyProtocol.V2


def test_proxy_protocol_v2_udp() -> None:
    config = {
        "listen": "udp:1.2.3.4:53",
        "connect": "udp:1.2.3.4:53",
        "user.lxdproxy.proxy_protocol": "v2",
    }
    assert validate_proxy_device(config).proxy_protocol is ProxyProtocol.V2
    assert error_of(config | {"user.lxdproxy.proxy_protocol": "v1"}) == (
        'PROXY protocol v1 cannot be sent to udp servers (use "v2")'
    )


def test_proxy_protocol_extension_values() -> None:
    base = {"listen": "tcp:1.2.3.4:80", "connect": "tcp:1.2.3.4:80"}
    assert validate_proxy_device(base | {"user.lxdproxy.proxy_protocol": ""}).proxy_protocol is (
        ProxyProtocol.NONE
    )
    v1 = base | {"user.lxdproxy.proxy_protocol": "v1", "proxy_protocol": "false"}
    assert validate_proxy_device(v1).proxy_protocol is ProxyProtocol.V1
    both = base | {"user.lxdproxy.proxy_protocol": "v2", "proxy_protocol": "true"}
    assert validate_proxy_device(both).proxy_protocol is ProxyProtocol.V2
    for bad in ("V2", "2", "v3", "true"):
        assert error_of(base | {"user.lxdproxy.proxy_protocol": bad}) == opt(
            "user.lxdproxy.proxy_protocol", 'must be "v1" or "v2"'
        )


def test_proxy_protocol_extension_not_with_nat() -> None:
    assert error_of(NAT_OK | {"user.lxdproxy.proxy_protocol": "v2"}) == (
        "The PROXY header can only be sent in non-nat mode"
    )


# ---- no input makes anything but ConfigError escape --------------------------------------------

KEYS = [
    "listen",
    "connect",
    "bind",
    "nat",
    "proxy_protocol",
    "uid",
    "gid",
    "mode",
    "security.uid",
    "security.gid",
    "type",
    "user.lxdproxy.proxy_protocol",
    "user.lxdproxy.nat_wildcard",
    "user.lxdproxy.nat_dynamic",
    "user.lxdproxy.security.bind_uid",
    "user.lxdproxy.security.bind_gid",
    "user.x",
    "initial.x",
]
ADDRESS_TEXT = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda kind, host, ports: f"{kind}:{host}:{ports}",
        st.sampled_from(["tcp", "udp", "unix", "TCP", ""]),
        st.sampled_from(["", "127.0.0.1", "[::1]", "[::]", "0.0.0.0", "[::ffff:1.2.3.4]", "x"]),
        st.from_regex(r"[0-9+,\-]{0,12}", fullmatch=True),
    ),
)
VALUES = st.one_of(
    ADDRESS_TEXT,
    st.sampled_from(["", "true", "no", "v2", "host", "instance", "0644", "1234", "-1"]),
    st.integers(),
    st.none(),
    st.booleans(),
)


@settings(max_examples=400, deadline=None)
@given(
    config=st.dictionaries(st.one_of(st.sampled_from(KEYS), st.text(max_size=8)), VALUES),
    instance_type=st.sampled_from([InstanceType.CONTAINER, InstanceType.VM, "container", "x"]),
    forwards=st.lists(st.sampled_from(["127.0.0.1", "::1", "0.0.0.0", "bogus"]), max_size=2),
)
def test_fuzz_only_config_errors(config: dict, instance_type: object, forwards: list) -> None:
    try:
        device = validate_proxy_device(
            config,
            instance_type,  # type: ignore[arg-type]
            forward_listen_addresses=forwards,
        )
    except ConfigError as exc:
        assert exc.message and "Traceback" not in exc.message
        # voluptuous's own wording never reaches the user
        for phrase in ("extra keys not allowed", "expected str", "required key", "not a valid"):
            assert phrase not in exc.message
    else:
        assert isinstance(device, ProxyDevice)
        if device.listen.conn_type.value != "unix" and device.connect.conn_type.value != "unix":
            assert len(device.port_map) == len(device.listen.ports)


@settings(max_examples=200, deadline=None)
@given(
    listen=ADDRESS_TEXT,
    connect=ADDRESS_TEXT,
    extra=st.dictionaries(st.sampled_from(KEYS[2:]), st.text(max_size=6), max_size=3),
)
def test_fuzz_addresses(listen: str, connect: str, extra: dict) -> None:
    try:
        validate_proxy_device({"listen": listen, "connect": connect} | extra)
    except ConfigError:
        pass


DYNAMIC = {"listen": "tcp:198.18.0.1:80", "connect": "tcp:0.0.0.0:8080", "nat": "true",
           "user.lxdproxy.nat_dynamic": "true"}


def test_nat_dynamic_v4() -> None:
    device = validate_proxy_device(DYNAMIC)
    assert device.nat and device.nat_dynamic and not device.nat_wildcard


def test_nat_dynamic_v6() -> None:
    device = validate_proxy_device(DYNAMIC | {"listen": "tcp:[fd42::1]:80",
                                              "connect": "tcp:[::]:8080"})
    assert device.nat_dynamic


def test_nat_dynamic_refusals() -> None:
    assert error_of(DYNAMIC | {"nat": "false"}) == "user.lxdproxy.nat_dynamic needs nat=true"
    assert error_of({k: v for k, v in DYNAMIC.items() if k != "nat"}) == (
        "user.lxdproxy.nat_dynamic needs nat=true")
    assert error_of(DYNAMIC | {"connect": "tcp:198.18.0.11:8080"}) == (
        'user.lxdproxy.nat_dynamic needs a wildcard connect address ("0.0.0.0" or "::"): '
        "the target is the instance's current address")
    # LXD's own rules come first: the same family on both sides.
    assert error_of(DYNAMIC | {"connect": "tcp:[::]:8080"}) == (
        "Cannot mix IP versions between listen and connect in nat mode")
    assert error_of(DYNAMIC | {"user.lxdproxy.nat_dynamic": "maybe"}) == opt(
        "user.lxdproxy.nat_dynamic", 'Invalid value for a boolean "maybe"')
    assert not validate_proxy_device(DYNAMIC | {"user.lxdproxy.nat_dynamic": "false"}).nat_dynamic


UNIX_LISTEN = {"listen": "unix:/run/s.sock", "connect": "tcp:127.0.0.1:80"}


def test_bind_ids() -> None:
    device = validate_proxy_device(UNIX_LISTEN | {"user.lxdproxy.security.bind_uid": "1000"})
    assert (device.bind_uid, device.bind_gid, device.drops_bind_ids) == (1000, None, True)
    device = validate_proxy_device(UNIX_LISTEN | {"user.lxdproxy.security.bind_gid": "0"})
    assert (device.bind_uid, device.bind_gid, device.drops_bind_ids) == (None, 0, True)
    assert not validate_proxy_device(UNIX_LISTEN).drops_bind_ids
    both = {"user.lxdproxy.security.bind_uid": "1000", "user.lxdproxy.security.bind_gid": "50"}
    device = validate_proxy_device(UNIX_LISTEN | both | {"uid": "1000", "gid": "50"})
    assert (device.uid, device.gid, device.bind_uid, device.bind_gid) == (1000, 50, 1000, 50)
    tcp = {"listen": "tcp:127.0.0.1:80", "connect": "tcp:127.0.0.1:81"}
    assert validate_proxy_device(tcp | both).bind_uid == 1000


@pytest.mark.parametrize("value", ["x", "-1", "4294967296", " 1"])
def test_bind_ids_not_an_integer(value: str) -> None:
    for key in ("user.lxdproxy.security.bind_uid", "user.lxdproxy.security.bind_gid"):
        assert error_of(UNIX_LISTEN | {key: value}) == opt(key, "Invalid value for a UNIX ID")


def test_bind_ids_refusals() -> None:
    key = "user.lxdproxy.security.bind_uid"
    assert error_of(NAT_OK | {key: "1000"}) == (
        f"{key} cannot be used in nat mode: the kernel forwards, no socket listens")
    assert error_of(UNIX_LISTEN | {key: "1000", "uid": "0"}) == (
        f'uid "0" cannot be set on a socket made by {key} "1000": only root may give a file '
        "to another user")
    assert error_of(UNIX_LISTEN | {key: "1000", "gid": "1000"}) == (
        f'gid "1000" cannot be set on a socket made by {key} "1000" and '
        'user.lxdproxy.security.bind_gid "0": only root may give a file to another group')
    # bind_uid 0 is root: it may give the file to anyone.
    assert validate_proxy_device(UNIX_LISTEN | {key: "0", "uid": "5", "gid": "6"}).uid == 5
