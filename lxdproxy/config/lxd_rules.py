"""LXD 5.0.2's cross-field rules for a proxy device (``validateConfig``, spec §1.1 steps 2-8).

Applied in LXD's order, first failure wins, each with LXD's exact message. Only runs after every
per-key check has passed, as in LXD.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from lxdproxy.config.gonet import IPV4_ZERO, IPV6_ZERO, ip_string, parse_ip, to4
from lxdproxy.config.gostrconv import go_quote
from lxdproxy.config.keys import EXT_NAT_WILDCARD, is_true
from lxdproxy.config.model import ConnType, InstanceType, ProxyAddress
from lxdproxy.errors import ConfigError


def ip_family(address: str) -> int:
    """LXD's validation-time family: 4 when the IP has a 4-byte form (IPv4-mapped counts), else 6.

    An empty or unparsable host is "6", exactly like Go's ``nil.To4() == nil``.
    """
    ip = parse_ip(address)
    return 4 if ip is not None and to4(ip) is not None else 6


def check_forward_conflicts(listen: ProxyAddress, forward_listen_addresses: Iterable[object]) -> None:
    """Step 4: the listen IP must not be a network forward's listen address (any port/protocol).

    IPs are compared as IPs (``1.2.3.4`` equals ``::ffff:1.2.3.4``). Unix paths and the empty
    host never conflict. LXD 5.0.2 itself has no such check (added in later LXD); it only
    applies when the caller passes forward addresses.
    """
    listen_ip = parse_ip(listen.address) if listen.conn_type is not ConnType.UNIX else None
    if listen_ip is None:
        return
    try:
        for forward in forward_listen_addresses:
            text = str(forward)
            if parse_ip(text) == listen_ip:
                raise ConfigError(
                    f"Listen address {go_quote(text)} conflicts with existing network forward"
                )
    except ConfigError:
        raise
    except Exception as exc:  # a failing source of forward addresses is LXD's "DB failure"
        raise ConfigError(f"Failed loading network forward listen addresses: {exc}") from None


def check_lxd_cross_fields(
    raw: Mapping[str, str],
    listen: ProxyAddress,
    connect: ProxyAddress,
    instance_type: InstanceType,
    forward_listen_addresses: Iterable[object],
    *,
    project_has_networks_feature: bool = False,
) -> None:
    nat = is_true(raw.get("nat", ""))
    # 2. forkproxy needs the container's init PID, so VMs only get NAT.
    if instance_type is InstanceType.VM and not nat:
        raise ConfigError("Only NAT mode is supported for proxies on VM instances")
    # 4.
    check_forward_conflicts(listen, forward_listen_addresses)
    # 5. Fewer connect ports than listen ports passes here even when it is not 1 (see
    #    start_checks.py for the rule forkproxy applies at start).
    if (listen.conn_type is not ConnType.UNIX and len(connect.ports) > len(listen.ports)) or (
        listen.conn_type is ConnType.UNIX and len(connect.ports) > 1
    ):
        raise ConfigError("Mismatch between listen port(s) and connect port(s) count")
    # 6. LXD tests the raw connect text's prefix; after parsing, that is "connect is tcp".
    if is_true(raw.get("proxy_protocol", "")) and (connect.conn_type is not ConnType.TCP or nat):
        raise ConfigError("The PROXY header can only be sent to tcp servers in non-nat mode")
    # 7.
    if (listen.conn_type is not ConnType.UNIX or listen.abstract) and any(
        raw.get(key, "") != "" for key in ("uid", "gid", "mode")
    ):
        raise ConfigError(
            "Only proxy devices for non-abstract unix sockets can carry uid, gid, or mode properties"
        )
    if nat:
        check_lxd_nat(raw, listen, connect, project_has_networks_feature)


def check_lxd_nat(
    raw: Mapping[str, str],
    listen: ProxyAddress,
    connect: ProxyAddress,
    project_has_networks_feature: bool,
) -> None:
    # 8a. OVN networks don't let the host reach instance NICs, so DNAT on the host can't work.
    if project_has_networks_feature:
        raise ConfigError("NAT mode cannot be used in projects that have the networks feature")
    # 8b.
    if raw.get("bind", "") not in ("", "host"):
        raise ConfigError("Only host-bound proxies can use NAT")
    # 8c.
    if (
        listen.conn_type is ConnType.UNIX
        or connect.conn_type is ConnType.UNIX
        or listen.conn_type is not connect.conn_type
    ):
        raise ConfigError(
            f"Proxying {listen.conn_type.value} <-> {connect.conn_type.value} "
            "is not supported when using NAT"
        )
    # 8d. IP equality, so ::ffff:0.0.0.0 is the IPv4 wildcard; printed as Go's IP.String().
    #     user.lxdproxy.nat_wildcard=true lifts this (Incus behaviour: match on local addresses).
    listen_ip = parse_ip(listen.address)
    if listen_ip in (IPV4_ZERO, IPV6_ZERO) and not is_true(raw.get(EXT_NAT_WILDCARD, "")):
        raise ConfigError(
            f"Cannot listen on wildcard address {go_quote(ip_string(listen_ip))} when in nat mode"
        )
    # 8e.
    if ip_family(listen.address) != ip_family(connect.address):
        raise ConfigError("Cannot mix IP versions between listen and connect in nat mode")


__all__ = ["check_forward_conflicts", "check_lxd_cross_fields", "check_lxd_nat", "ip_family"]
