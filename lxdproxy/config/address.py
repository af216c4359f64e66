"""The proxy address grammar, ``<type>:<addr>``, as LXD's ``network.ProxyParseAddr`` reads it.

Pure. Every error carries LXD's inner parser text (spec §2); the device validator adds the
``Invalid value for device option "<key>": `` prefix.
"""

from __future__ import annotations

from lxdproxy.config.gonet import GoAddrError, parse_ip, split_host_port
from lxdproxy.config.gostrconv import GoNumError, go_parse_int, go_quote
from lxdproxy.config.model import ConnType, ProxyAddress
from lxdproxy.errors import ConfigError

_TYPES = {t.value: t for t in ConnType}

# LXD expands ranges without any bound (a `1-9223372036854775807` listen makes LXD allocate until
# it dies). No valid device ever has more than 65535 ports on one side (ports are 1..65535 and
# listen ports must be distinct), so we stop expanding well before memory becomes a concern.
MAX_EXPANDED_PORTS = 2 * 65536


def _parse_port_range(item: str) -> tuple[int, int]:
    """LXD's ``ParsePortRange``: (start, count). The ``-`` count check comes before ParseInt."""
    entries = item.split("-")
    if len(entries) > 2:
        raise ConfigError(f"Invalid port range {go_quote(item)}")
    base = go_parse_int(entries[0])
    size = 1
    if len(entries) > 1:
        end = go_parse_int(entries[1])
        if end <= base:
            raise ConfigError("End port should be higher than start port")
        size = end - base + 1
    return base, size


def _parse_ports(text: str) -> tuple[int, ...]:
    ports: list[int] = []
    for item in text.split(","):
        start, size = _parse_port_range(item)
        if len(ports) + size > MAX_EXPANDED_PORTS:
            raise ConfigError(
                f"Too many ports in {go_quote(text)} (a proxy device can use at most 65535)"
            )
        ports.extend(range(start, start + size))
    # LXD's "At least one port is required" is unreachable: an empty item fails ParseInt first.
    return tuple(ports)


def parse_address(text: str) -> ProxyAddress:
    """Parse ``tcp:<host>:<ports>``, ``udp:<host>:<ports>`` or ``unix:<path|@name>``.

    Raises ``ConfigError`` with LXD's exact message. Like LXD, the host is kept as written
    (brackets stripped, not canonicalised), an empty host is accepted, and ports are neither
    bounded nor de-duplicated here (the device validator rejects those, see validate.py).
    """
    if not isinstance(text, str):
        raise ConfigError(f"Invalid address {text!r}: must be a string")
    kind, sep, rest = text.partition(":")
    conn_type = _TYPES.get(kind)
    if conn_type is None:
        raise ConfigError(f"Unknown protocol type {go_quote(kind)}")
    if not sep or rest == "":
        raise ConfigError("Missing address")
    abstract = rest.startswith("@")
    if conn_type is ConnType.UNIX:
        return ProxyAddress(conn_type, rest, (), abstract)
    try:
        host, port_text = split_host_port(rest)
    except GoAddrError as exc:
        raise ConfigError(str(exc)) from None
    if host != "" and parse_ip(host) is None:
        raise ConfigError(f"Not an IP address {go_quote(host)}")
    try:
        ports = _parse_ports(port_text)
    except GoNumError as exc:
        raise ConfigError(str(exc)) from None
    return ProxyAddress(conn_type, host, ports, abstract)


def compress_ports(ports: tuple[int, ...] | list[int]) -> str:
    """``[80, 81, 82, 90, 80]`` -> ``"80-82,90,80"``: runs of +1 steps become ranges, order kept."""
    items: list[str] = []
    index = 0
    while index < len(ports):
        start = end = ports[index]
        index += 1
        while index < len(ports) and ports[index] == end + 1:
            end = ports[index]
            index += 1
        items.append(str(start) if start == end else f"{start}-{end}")
    return ",".join(items)


def format_address(addr: ProxyAddress) -> str:
    """The config text for an address; ``parse_address(format_address(a)) == a`` for parsed ``a``.

    IPv6 hosts are re-bracketed and ports re-compressed into ranges, so the text may differ from
    what the user wrote (``+80`` -> ``80``, ``[1.2.3.4]`` -> ``1.2.3.4``).
    """
    if addr.conn_type is ConnType.UNIX:
        return f"unix:{addr.address}"
    host = f"[{addr.address}]" if ":" in addr.address else addr.address
    return f"{addr.conn_type.value}:{host}:{compress_ports(addr.ports)}"


__all__ = ["MAX_EXPANDED_PORTS", "compress_ports", "format_address", "parse_address"]
