"""validate_proxy_device: LXD's per-key and cross-field rules with their exact messages (spec §1)."""

from __future__ import annotations

import pytest

from lxdproxy.config import validate_proxy_device
from lxdproxy.config.model import BindSide, ConnType, InstanceType, ProxyAddress, ProxyProtocol
from lxdproxy.errors import ConfigError

VM = InstanceType.VM
OK_TCP = {"listen": "tcp:127.0.0.1:1234", "connect": "tcp:127.0.0.1:4321"}
NAT_OK = {"listen": "tcp:127.0.0.1:1234", "connect": "tcp:192.0.2.10:1234", "nat": "true"}


def error_of(config: dict, instance_type: object = InstanceType.CONTAINER, **kw: object) -> str:
    with pytest.raises(ConfigError) as info:
        validate_proxy_device(config, instance_type, **kw)  # type: ignore[arg-type]
    assert info.value.status == 400
    return info.value.message


def opt(key: str, inner: str) -> str:
    return f'Invalid value for device option "{key}": {inner}'


# ---- per-key rules ---------------------------------------------------------------------------


def test_missing_listen_and_connect() -> None:
    assert error_of({}) == opt("listen", 'Unknown protocol type ""')
    assert error_of({"listen": "tcp:1.2.3.4:80"}) == opt("connect", 'Unknown protocol type ""')


def test_connect_hostname() -> None:
    assert error_of({"listen": "tcp:127.0.0.1:80", "connect": "tcp:localhost:80"}) == opt(
        "connect", 'Not an IP address "localhost"'
    )


@pytest.mark.parametrize("key", ["nat", "proxy_protocol"])
@pytest.mark.parametrize("value", ["maybe", "y", "t", "2", " true", "truee"])
def test_bad_bools(key: str, value: str) -> None:
    assert error_of(OK_TCP | {key: value}) == opt(key, f'Invalid value for a boolean "{value}"')


@pytest.mark.parametrize("value", ["true", "FALSE", "Yes", "no", "1", "0", "ON", "off", ""])
def test_good_bools(value: str) -> None:
    validate_proxy_device(OK_TCP | {"proxy_protocol": value})


@pytest.mark.parametrize("key", ["uid", "gid", "security.uid", "security.gid"])
@pytest.mark.parametrize("value", ["-1", "+1", "4294967296", "1.0", "abc", " 1", "1_000", "٣"])
def test_bad_unix_ids(key: str, value: str) -> None:
    config = {"listen": "unix:/tmp/s", "connect": "unix:/tmp/t", key: value}
    assert error_of(config) == opt(key, "Invalid value for a UNIX ID")


def test_good_unix_ids() -> None:
    device = validate_proxy_device(
        {
            "listen": "unix:/tmp/s",
            "connect": "unix:/tmp/t",
            "uid": "4294967295",
            "gid": "0007",
            "security.uid": "1234",
            "security.gid": "",
        }
    )
    assert (device.uid, device.gid, device.security_uid, device.security_gid) == (
        4294967295,
        7,
        1234,
        0,
    )


@pytest.mark.parametrize("value", ["8", "0o644", "-644", "+644", "rw", "40000000000", " 644"])
def test_bad_modes(value: str) -> None:
    config = {"listen": "unix:/tmp/s", "connect": "unix:/tmp/t", "mode": value}
    assert error_of(config) == opt("mode", "Invalid value for an octal file mode")


@pytest.mark.parametrize(("value", "mode"), [("644", 0o644), ("0600", 0o600), ("7777", 0o7777)])
def test_good_modes(value: str, mode: int) -> None:
    config = {"listen": "unix:/tmp/s", "connect": "unix:/tmp/t", "mode": value}
    assert validate_proxy_device(config).mode == mode


def test_default_mode() -> None:
    assert validate_proxy_device({"listen": "unix:/s", "connect": "unix:/t"}).mode == 0o644


@pytest.mark.parametrize("value", ["Host", "guests", "both", " host"])
def test_bad_bind(value: str) -> None:
    assert error_of(OK_TCP | {"bind": value}) == opt(
        "bind", 'Invalid binding side given. Must be "host" or "instance"'
    )


@pytest.mark.parametrize(
    ("value", "side"),
    [
        ("", BindSide.HOST),
        ("host", BindSide.HOST),
        ("instance", BindSide.INSTANCE),
        ("guest", BindSide.INSTANCE),
        ("container", BindSide.INSTANCE),
    ],
)
def test_bind_aliases(value: str, side: BindSide) -> None:
    assert validate_proxy_device(OK_TCP | {"bind": value}).bind is side


def test_unknown_keys_come_after_known_keys_and_sorted() -> None:
    assert error_of(OK_TCP | {"zzz": "1", "foo": "2"}) == 'Invalid device option "foo"'
    # An invalid known key wins over an unknown key, as in LXD.
    assert error_of(OK_TCP | {"aaa": "1", "nat": "x"}) == opt(
        "nat", 'Invalid value for a boolean "x"'
    )
    # LXD 5.0.2 has no initial.* pass-through (newer LXD does).
    assert error_of(OK_TCP | {"initial.x": "1"}) == 'Invalid device option "initial.x"'
    assert error_of(OK_TCP | {"a\tb": "1"}) == 'Invalid device option "a\\tb"'


def test_documented_key_order() -> None:
    bad = {
        "listen": "x",
        "connect": "y",
        "bind": "z",
        "nat": "n",
        "proxy_protocol": "p",
        "uid": "u",
        "gid": "g",
        "mode": "m",
        "security.uid": "su",
        "security.gid": "sg",
        "unknown": "",
    }
    expected_keys = [
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
    ]
    good = {"listen": "unix:/a", "connect": "unix:/b", "bind": "host", "mode": "0644"}
    for key in expected_keys:
        assert error_of(bad).startswith(f'Invalid value for device option "{key}"')
        bad[key] = good.get(key, "1")
    assert error_of(bad) == 'Invalid device option "unknown"'


def test_generic_keys_pass() -> None:
    device = validate_proxy_device(OK_TCP | {"type": "proxy", "user.anything": "x"})
    assert device.config == (
        ("connect", "tcp:127.0.0.1:4321"),
        ("listen", "tcp:127.0.0.1:1234"),
        ("type", "proxy"),
        ("user.anything", "x"),
    )


def test_device_and_instance_type() -> None:
    assert error_of(OK_TCP | {"type": "nic"}) == "Unsupported device type"
    assert error_of(OK_TCP, "profile") == "Unsupported device type"
    assert validate_proxy_device(NAT_OK, "virtual-machine").nat  # type: ignore[arg-type]


def test_non_string_input() -> None:
    assert error_of(OK_TCP | {"nat": True}) == opt("nat", "must be a string, not bool")
    assert "option names must be strings" in error_of({1: "x"})
    assert "mapping" in error_of(["listen"])  # type: ignore[arg-type]


# ---- cross-field rules, LXD's order ----------------------------------------------------------


def test_vm_needs_nat() -> None:
    message = "Only NAT mode is supported for proxies on VM instances"
    assert error_of(OK_TCP, VM) == message
    assert error_of(OK_TCP | {"nat": "off"}, VM) == message
    # Per-key errors come first.
    assert error_of(OK_TCP | {"foo": "1"}, VM) == 'Invalid device option "foo"'


@pytest.mark.parametrize(
    ("listen", "forwards", "conflicting"),
    [
        ("tcp:192.0.2.2:80", ["192.0.2.2"], "192.0.2.2"),
        ("udp:192.0.2.2:53", ["10.0.0.1", "192.0.2.2"], "192.0.2.2"),
        ("tcp:[::ffff:192.0.2.2]:80", ["192.0.2.2"], "192.0.2.2"),
        ("tcp:192.0.2.2:80", ["::ffff:192.0.2.2"], "::ffff:192.0.2.2"),
        ("tcp:[fd42:0::2]:80", ["fd42::1", "fd42::2"], "fd42::2"),
    ],
)
def test_forward_conflict(listen: str, forwards: list[str], conflicting: str) -> None:
    config = {"listen": listen, "connect": "tcp:192.0.2.3:4321"}
    assert error_of(config, forward_listen_addresses=forwards) == (
        f'Listen address "{conflicting}" conflicts with existing network forward'
    )


def test_forward_conflict_applies_in_nat_mode_too_and_before_port_counts() -> None:
    config = {"listen": "tcp:192.0.2.2:80", "connect": "tcp:192.0.2.3:1-2", "nat": "true"}
    assert error_of(config, forward_listen_addresses=["192.0.2.2"]).startswith("Listen address")


def test_forward_no_conflict() -> None:
    validate_proxy_device(
        {"listen": "unix:/192.0.2.2", "connect": "tcp:1.2.3.4:1"},
        forward_listen_addresses=["192.0.2.2", "not an ip"],
    )
    validate_proxy_device(
        {"listen": "tcp::80", "connect": "tcp:1.2.3.4:1"}, forward_listen_addresses=["0.0.0.0"]
    )


def test_forward_source_failure() -> None:
    def broken():  # type: ignore[no-untyped-def]
        raise RuntimeError("database is locked")
        yield ""

    assert error_of(OK_TCP, forward_listen_addresses=broken()) == (
        "Failed loading network forward listen addresses: database is locked"
    )


@pytest.mark.parametrize(
    ("listen", "connect"),
    [
        ("tcp:1.2.3.4:80", "tcp:1.2.3.4:80,81"),
        ("udp:1.2.3.4:80-81", "udp:1.2.3.4:80-82"),
        ("unix:/a", "tcp:1.2.3.4:80,81"),
    ],
)
def test_port_count_mismatch(listen: str, connect: str) -> None:
    assert error_of({"listen": listen, "connect": connect}) == (
        "Mismatch between listen port(s) and connect port(s) count"
    )


PROXY_HEADER = "The PROXY header can only be sent to tcp servers in non-nat mode"


@pytest.mark.parametrize(
    "config",
    [
        {"listen": "tcp:1.2.3.4:80", "connect": "udp:1.2.3.4:80", "proxy_protocol": "true"},
        {"listen": "tcp:1.2.3.4:80", "connect": "unix:/s", "proxy_protocol": "yes"},
        NAT_OK | {"proxy_protocol": "1"},
    ],
)
def test_proxy_protocol_rule(config: dict) -> None:
    assert error_of(config) == PROXY_HEADER


UID_RULE = "Only proxy devices for non-abstract unix sockets can carry uid, gid, or mode properties"


@pytest.mark.parametrize("key", ["uid", "gid", "mode"])
@pytest.mark.parametrize("listen", ["tcp:1.2.3.4:80", "unix:@abstract", "udp:1.2.3.4:53"])
def test_uid_gid_mode_need_unix_path(key: str, listen: str) -> None:
    connect = "udp:1.2.3.4:53" if listen.startswith("udp") else "tcp:1.2.3.4:80"
    assert error_of({"listen": listen, "connect": connect, key: "0"}) == UID_RULE


def test_uid_gid_mode_on_unix_connect_side_is_not_enough() -> None:
    assert error_of({"listen": "tcp:1.2.3.4:1", "connect": "unix:/s", "uid": "1"}) == UID_RULE


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (NAT_OK | {"bind": "instance"}, "Only host-bound proxies can use NAT"),
        (NAT_OK | {"bind": "guest"}, "Only host-bound proxies can use NAT"),
        (
            NAT_OK | {"connect": "udp:192.0.2.10:1234"},
            "Proxying tcp <-> udp is not supported when using NAT",
        ),
        (
            NAT_OK | {"listen": "unix:/s"},
            "Proxying unix <-> tcp is not supported when using NAT",
        ),
        (
            {"listen": "udp:1.2.3.4:1", "connect": "unix:/s", "nat": "yes"},
            "Proxying udp <-> unix is not supported when using NAT",
        ),
        (
            NAT_OK | {"listen": "tcp:0.0.0.0:80"},
            'Cannot listen on wildcard address "0.0.0.0" when in nat mode',
        ),
        (
            NAT_OK | {"listen": "tcp:[::ffff:0.0.0.0]:80"},
            'Cannot listen on wildcard address "0.0.0.0" when in nat mode',
        ),
        (
            NAT_OK | {"listen": "tcp:[0:0:0:0::0]:80", "connect": "tcp:[fd42::1]:80"},
            'Cannot listen on wildcard address "::" when in nat mode',
        ),
        (
            NAT_OK | {"connect": "tcp:[fd42::1]:80"},
            "Cannot mix IP versions between listen and connect in nat mode",
        ),
        (
            # LXD: an empty host has no 4-byte form, so it counts as IPv6 here.
            NAT_OK | {"listen": "tcp::80"},
            "Cannot mix IP versions between listen and connect in nat mode",
        ),
    ],
)
def test_nat_rules(config: dict, message: str) -> None:
    assert error_of(config) == message


def test_nat_project_networks_feature() -> None:
    assert error_of(NAT_OK, project_has_networks_feature=True) == (
        "NAT mode cannot be used in projects that have the networks feature"
    )
    validate_proxy_device(OK_TCP, project_has_networks_feature=True)


def test_rule_order_port_count_before_proxy_protocol_before_uid_before_nat() -> None:
    config = {
        "listen": "tcp:0.0.0.0:1",
        "connect": "udp:1.2.3.4:1,2",
        "proxy_protocol": "true",
        "uid": "1",
        "nat": "true",
        "bind": "instance",
    }
    assert error_of(config) == "Mismatch between listen port(s) and connect port(s) count"
    config["connect"] = "udp:1.2.3.4:1"
    assert error_of(config) == PROXY_HEADER
    del config["proxy_protocol"]
    assert error_of(config) == UID_RULE
    del config["uid"]
    assert error_of(config) == "Only host-bound proxies can use NAT"


# ---- LXD's own test suite, checklist §7 A ------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"listen": "tcp:127.0.0.1:3000", "connect": "tcp:localhost:4321", "bind": "host"},
            opt("connect", 'Not an IP address "localhost"'),
        ),
        (
            {"listen": "tcp:0.0.0.0:3000", "connect": "tcp:0.0.0.0:4321", "nat": "true"},
            'Cannot listen on wildcard address "0.0.0.0" when in nat mode',
        ),
        (
            {"listen": "tcp:[::]:3000", "connect": "tcp:0.0.0.0:4321", "nat": "true"},
            'Cannot listen on wildcard address "::" when in nat mode',
        ),
        (
            {"listen": "tcp:127.0.0.1:3000", "connect": "tcp:[::]:4321", "nat": "true"},
            "Cannot mix IP versions between listen and connect in nat mode",
        ),
        (
            {"listen": "tcp:[::1]:3000", "connect": "tcp:0.0.0.0:4321", "nat": "true"},
            "Cannot mix IP versions between listen and connect in nat mode",
        ),
        (
            {
                "listen": "tcp:[::1]:3000",
                "connect": "tcp:[::]:4321",
                "nat": "true",
                "proxy_protocol": "true",
            },
            PROXY_HEADER,
        ),
    ],
)
def test_lxd_checklist_a(config: dict, message: str) -> None:
    assert error_of(config) == message


def test_lxd_checklist_valid_devices() -> None:
    validate_proxy_device({"listen": "tcp:127.0.0.1:3000", "connect": "tcp:127.0.0.1:4321"})
    validate_proxy_device({"listen": "tcp:[::1]:1234", "connect": "tcp:[::]:1234", "nat": "true"})
    validate_proxy_device(
        {"listen": "tcp:127.0.0.1:1234-1235", "connect": "tcp:192.0.2.10:1234", "nat": "true"}
    )
    validate_proxy_device(
        {"listen": "tcp:127.0.0.1:1234", "connect": "udp:192.0.2.10:1234", "bind": "host"}
    )
    validate_proxy_device(
        {
            "listen": "unix:/tmp/host.sock",
            "uid": "1234",
            "gid": "1234",
            "security.uid": "1234",
            "security.gid": "1234",
            "connect": "unix:/tmp/c.sock",
            "bind": "host",
        }
    )


# ---- the parsed result -----------------------------------------------------------------------


def test_result_fields_and_port_map() -> None:
    device = validate_proxy_device(
        {"listen": "tcp:127.0.0.1:3000,3001,3002", "connect": "tcp:127.0.0.1:4321-4323"}
    )
    assert device.listen == ProxyAddress(ConnType.TCP, "127.0.0.1", (3000, 3001, 3002))
    assert device.port_map == ((3000, 4321), (3001, 4322), (3002, 4323))
    assert device.bind is BindSide.HOST and not device.nat
    assert device.proxy_protocol is ProxyProtocol.NONE
    n_to_1 = validate_proxy_device({"listen": "udp:[::1]:53,54", "connect": "udp:[::1]:5353"})
    assert n_to_1.port_map == ((53, 5353), (54, 5353))
    assert validate_proxy_device({"listen": "unix:/a", "connect": "tcp:1.2.3.4:80"}).port_map == ()
    assert validate_proxy_device({"listen": "tcp:1.2.3.4:80", "connect": "unix:/a"}).port_map == ()
    assert validate_proxy_device({"listen": "unix:/a", "connect": "tcp:1.2.3.4:8"}).unix_connect_port == 8
