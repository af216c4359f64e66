"""The address grammar (spec §2): LXD's test vectors, Go's exact errors, format round trip."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lxdproxy.config import format_address, parse_address
from lxdproxy.config.address import compress_ports
from lxdproxy.config.gonet import parse_ip, split_host_port
from lxdproxy.config.model import ConnType, ProxyAddress
from lxdproxy.errors import ConfigError

TCP, UDP, UNIX = ConnType.TCP, ConnType.UDP, ConnType.UNIX

VALID = [
    ("tcp:127.0.0.1:2000", ProxyAddress(TCP, "127.0.0.1", (2000,))),
    ("tcp:127.0.0.1:2000,2002", ProxyAddress(TCP, "127.0.0.1", (2000, 2002))),
    ("tcp:127.0.0.1:2000-2002", ProxyAddress(TCP, "127.0.0.1", (2000, 2001, 2002))),
    (
        "tcp:127.0.0.1:2000,2002,3000-3003,4000-4003",
        ProxyAddress(
            TCP, "127.0.0.1", (2000, 2002, 3000, 3001, 3002, 3003, 4000, 4001, 4002, 4003)
        ),
    ),
    ("udp:127.0.0.1:2000", ProxyAddress(UDP, "127.0.0.1", (2000,))),
    ("unix:/foobar", ProxyAddress(UNIX, "/foobar", (), False)),
    ("unix:@/foobar", ProxyAddress(UNIX, "@/foobar", (), True)),
    (
        "tcp:[fd39:2561:7238:91b5:0:0:0:0]:2000",
        ProxyAddress(TCP, "fd39:2561:7238:91b5:0:0:0:0", (2000,)),
    ),
    ("tcp:[fd39:2561:7238:91b5::0]:2000", ProxyAddress(TCP, "fd39:2561:7238:91b5::0", (2000,))),
    ("tcp:[::1]:2000", ProxyAddress(TCP, "::1", (2000,))),
    ("tcp:[::]:2000", ProxyAddress(TCP, "::", (2000,))),
    ("tcp::80", ProxyAddress(TCP, "", (80,))),
    ("tcp:[]:80", ProxyAddress(TCP, "", (80,))),
    ("tcp:[1.2.3.4]:80", ProxyAddress(TCP, "1.2.3.4", (80,))),
    ("tcp:1.2.3.4:70000", ProxyAddress(TCP, "1.2.3.4", (70000,))),
    ("tcp:1.2.3.4:0", ProxyAddress(TCP, "1.2.3.4", (0,))),
    ("tcp:1.2.3.4:80,80", ProxyAddress(TCP, "1.2.3.4", (80, 80))),
    ("tcp:1.2.3.4:+80", ProxyAddress(TCP, "1.2.3.4", (80,))),
    ("tcp:1.2.3.4:080", ProxyAddress(TCP, "1.2.3.4", (80,))),
    ("tcp:1.2.3.4:+08-+10", ProxyAddress(TCP, "1.2.3.4", (8, 9, 10))),
    # Go 1.19's ParseIP: IPv4 inside IPv6, hex groups with extra leading zeros.
    ("tcp:[::ffff:1.2.3.4]:80", ProxyAddress(TCP, "::ffff:1.2.3.4", (80,))),
    ("tcp:[::1.2.3.4]:80", ProxyAddress(TCP, "::1.2.3.4", (80,))),
    ("tcp:[1:2:3:4:5:6:1.2.3.4]:80", ProxyAddress(TCP, "1:2:3:4:5:6:1.2.3.4", (80,))),
    ("tcp:[000001::]:80", ProxyAddress(TCP, "000001::", (80,))),
    ("udp:[FD42::1]:53", ProxyAddress(UDP, "FD42::1", (53,))),
    # unix: taken as-is, ports and all; abstract is set for any type starting with '@'.
    ("unix:relative/path:80", ProxyAddress(UNIX, "relative/path:80", ())),
    ("unix:@", ProxyAddress(UNIX, "@", (), True)),
]


@pytest.mark.parametrize(("text", "expected"), VALID, ids=[v[0] for v in VALID])
def test_valid_vectors(text: str, expected: ProxyAddress) -> None:
    assert parse_address(text) == expected


INVALID = [
    ("bla:blub", 'Unknown protocol type "bla"'),
    ("", 'Unknown protocol type ""'),
    ("TCP:1.2.3.4:80", 'Unknown protocol type "TCP"'),
    ("tcp1.2.3.4:80", 'Unknown protocol type "tcp1.2.3.4"'),
    ('a"b\n:x', 'Unknown protocol type "a\\"b\\n"'),
    ("tcp", "Missing address"),
    ("tcp:", "Missing address"),
    ("unix:", "Missing address"),
    ("udp:", "Missing address"),
    (
        "tcp:fd39:2561:7238:91b5:0:0:0:0:2000",
        "address fd39:2561:7238:91b5:0:0:0:0:2000: too many colons in address",
    ),
    (
        "tcp:fd39:2561:7238:91b5::0:2000",
        "address fd39:2561:7238:91b5::0:2000: too many colons in address",
    ),
    ("tcp:localhost:4321", 'Not an IP address "localhost"'),
    ("tcp:1.2.3.4", "address 1.2.3.4: missing port in address"),
    ("tcp:[::1]", "address [::1]: missing port in address"),
    ("tcp:[::1]x:80", "address [::1]x:80: missing port in address"),
    ("tcp:[::1]:80:90", "address [::1]:80:90: too many colons in address"),
    ("tcp:[::1:80", "address [::1:80: missing ']' in address"),
    ("tcp:1[.2.3.4:80", "address 1[.2.3.4:80: unexpected '[' in address"),
    ("tcp:1].2.3.4:80", "address 1].2.3.4:80: unexpected ']' in address"),
    ("tcp:[::1]]:80", "address [::1]]:80: missing port in address"),
    ("tcp:[1.2.3.4]:8]0", "address [1.2.3.4]:8]0: unexpected ']' in address"),
    ("tcp:1.2.3.4:", 'strconv.ParseInt: parsing "": invalid syntax'),
    ("tcp:1.2.3.4:80,,81", 'strconv.ParseInt: parsing "": invalid syntax'),
    ("tcp:1.2.3.4:-5", 'strconv.ParseInt: parsing "": invalid syntax'),
    ("tcp:1.2.3.4:80-", 'strconv.ParseInt: parsing "": invalid syntax'),
    ("tcp:1.2.3.4:http", 'strconv.ParseInt: parsing "http": invalid syntax'),
    ("tcp:1.2.3.4:8_0", 'strconv.ParseInt: parsing "8_0": invalid syntax'),
    ("tcp:1.2.3.4: 80", 'strconv.ParseInt: parsing " 80": invalid syntax'),
    ("tcp:1.2.3.4:+", 'strconv.ParseInt: parsing "+": invalid syntax'),
    ("tcp:1.2.3.4:٣", 'strconv.ParseInt: parsing "٣": invalid syntax'),
    (
        "tcp:1.2.3.4:9223372036854775808",
        'strconv.ParseInt: parsing "9223372036854775808": value out of range',
    ),
    (
        # Go's ParseUint reports the overflow before it reaches the bad character.
        "tcp:1.2.3.4:99999999999999999999x",
        'strconv.ParseInt: parsing "99999999999999999999x": value out of range',
    ),
    ("tcp:1.2.3.4:80-80", "End port should be higher than start port"),
    ("tcp:1.2.3.4:90-80", "End port should be higher than start port"),
    ("tcp:1.2.3.4:1-2-3", 'Invalid port range "1-2-3"'),
    # LXD splits on every '-' before parsing anything.
    ("tcp:1.2.3.4:x-1-2", 'Invalid port range "x-1-2"'),
    # Go net.ParseIP rejects zones, leading zeros, bad IPv4-in-IPv6 placement.
    ("tcp:[fe80::1%eth0]:80", 'Not an IP address "fe80::1%eth0"'),
    ("tcp:01.2.3.4:80", 'Not an IP address "01.2.3.4"'),
    ("tcp:1.2.3.256:80", 'Not an IP address "1.2.3.256"'),
    ("tcp:1.2.3:80", 'Not an IP address "1.2.3"'),
    ("tcp:[::ffff:01.2.3.4]:80", 'Not an IP address "::ffff:01.2.3.4"'),
    ("tcp:[1:2:3:4:5:1.2.3.4]:80", 'Not an IP address "1:2:3:4:5:1.2.3.4"'),
    ("tcp:[1::2::3]:80", 'Not an IP address "1::2::3"'),
    ("tcp:[1:2:3:4:5:6:7:8::]:80", 'Not an IP address "1:2:3:4:5:6:7:8::"'),
    ("tcp:[10000::]:80", 'Not an IP address "10000::"'),
    ("tcp:[::1 ]:80", 'Not an IP address "::1 "'),
    ("udp:[\x00]:80", 'Not an IP address "\\x00"'),
    ("tcp:[é]:80", 'Not an IP address "é"'),
    ("tcp:[\u00a0]:80", 'Not an IP address "\\u00a0"'),
]


@pytest.mark.parametrize(("text", "message"), INVALID, ids=[v[0] for v in INVALID])
def test_invalid_vectors(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_address(text)
    assert info.value.message == message


def test_huge_range_is_refused_without_expanding() -> None:
    with pytest.raises(ConfigError, match="Too many ports"):
        parse_address("tcp:1.2.3.4:1-9223372036854775807")


def test_split_host_port_matches_go() -> None:
    assert split_host_port("[::1]:80") == ("::1", "80")
    assert split_host_port(":80") == ("", "80")
    assert split_host_port("a:") == ("a", "")
    assert split_host_port("[a]:") == ("a", "")


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("0.0.0.0", True),
        ("255.255.255.255", True),
        ("::", True),
        ("::ffff:0102:0304", True),
        ("0:0:0:0:0:0:0:0", True),
        ("1:2:3:4:5:6:7:8", True),
        ("1:2:3:4:5:6:7::", True),  # Go 1.19 accepts a trailing ellipsis worth one group
        ("1:2:3:4:5:6:7:8:9", False),
        (":1", False),
        ("1:", False),
        ("", False),
        ("1.2.3.4.5", False),
        ("00.1.2.3", False),
        ("0.1.2.3", True),
    ],
)
def test_parse_ip(text: str, ok: bool) -> None:
    assert (parse_ip(text) is not None) is ok


def test_compress_ports() -> None:
    assert compress_ports((80, 81, 82, 90, 80, 81, 7)) == "80-82,90,80-81,7"


FORMAT = [
    ("tcp:[::1]:80,81,82", "tcp:[::1]:80-82"),
    ("udp:1.2.3.4:+53", "udp:1.2.3.4:53"),
    ("tcp:[1.2.3.4]:1,3", "tcp:1.2.3.4:1,3"),
    ("tcp::80", "tcp::80"),
    ("unix:@abs", "unix:@abs"),
]


@pytest.mark.parametrize(("text", "formatted"), FORMAT)
def test_format_address(text: str, formatted: str) -> None:
    assert format_address(parse_address(text)) == formatted


hosts = st.one_of(
    st.just(""),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
    st.ip_addresses(v=6).map(lambda ip: ip.exploded),
    st.ip_addresses(v=4).map(lambda ip: f"::ffff:{ip}"),
)
port_items = st.one_of(
    st.integers(0, 70000).map(str),
    st.tuples(st.integers(0, 70000), st.integers(1, 40)).map(lambda t: f"{t[0]}-{t[0] + t[1]}"),
)


@given(
    kind=st.sampled_from(["tcp", "udp"]),
    host=hosts,
    items=st.lists(port_items, min_size=1, max_size=6),
)
def test_round_trip_inet(kind: str, host: str, items: list[str]) -> None:
    text = f"{kind}:[{host}]:{','.join(items)}" if ":" in host else f"{kind}:{host}:{','.join(items)}"
    parsed = parse_address(text)
    assert parsed.address == host
    assert parse_address(format_address(parsed)) == parsed
    if host:  # our Go ParseIP port agrees with Python on everything ipaddress can print
        assert parse_ip(host) == ipaddress.IPv6Address(parse_ip(host)).packed


@given(path=st.text(min_size=1))
def test_round_trip_unix(path: str) -> None:
    parsed = parse_address(f"unix:{path}")
    assert parsed.address == path and parsed.abstract == path.startswith("@")
    assert parse_address(format_address(parsed)) == parsed


@given(st.text())
def test_arbitrary_text_parses_or_config_error(text: str) -> None:
    try:
        parse_address(text)
    except ConfigError as exc:
        assert exc.message
