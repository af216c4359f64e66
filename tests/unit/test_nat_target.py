"""NAT target resolution: LXD's setupNAT rules and messages (spec §3), NIC order fixed."""

from __future__ import annotations

import ipaddress

import pytest

from lab.devices import C1, instance, nat_device
from lxdproxy.errors import DeviceStartError
from lxdproxy.instances.model import Nic
from lxdproxy.nat.target import resolve_nat_target


def test_exact_static_ipv4() -> None:
    t = resolve_nat_target(nat_device("tcp:192.0.2.2:7009", "tcp:10.123.0.10:8009"), C1)
    assert t.address == ipaddress.ip_address("10.123.0.10")
    assert t.nic.name == "eth0" and t.nic.host_name == "veth1234"
    assert t.version == 4


def test_wildcard_connect_takes_the_static_ip() -> None:
    t = resolve_nat_target(nat_device("tcp:192.0.2.2:80", "tcp:0.0.0.0:80"), C1)
    assert str(t.address) == "10.123.0.10"
    t6 = resolve_nat_target(nat_device("tcp:[fd42::1]:80", "tcp:[::]:80"), C1)
    assert str(t6.address) == "fd42::10"


def test_ipv6_listen_uses_ipv6_address() -> None:
    t = resolve_nat_target(nat_device("tcp:[::1]:1234", "tcp:[fd42::10]:1234"), C1)
    assert t.address == ipaddress.ip_address("fd42::10")


def test_other_ip_is_rejected_with_lxd_message() -> None:
    with pytest.raises(DeviceStartError) as exc:
        resolve_nat_target(nat_device("tcp:192.0.2.2:80", "tcp:10.123.0.11:80"), C1)
    assert str(exc.value) == (
        "Connect IP \"10.123.0.11\" must be one of the instance's static IPv4 addresses"
    )
    assert exc.value.status == 400
    with pytest.raises(DeviceStartError) as exc:
        resolve_nat_target(nat_device("tcp:[::1]:80", "tcp:[fd42::11]:80"), C1)
    assert str(exc.value) == (
        "Connect IP \"fd42::11\" must be one of the instance's static IPv6 addresses"
    )


def test_no_static_address_for_wildcard() -> None:
    bare = instance(Nic("eth0", "bridged"))
    with pytest.raises(DeviceStartError, match=r"^Instance has no static IPv4 address assigned "
                       r"to be used as the connect IP$"):
        resolve_nat_target(nat_device("tcp:192.0.2.2:80", "tcp:0.0.0.0:80"), bare)
    with pytest.raises(DeviceStartError, match="no static IPv6 address"):
        resolve_nat_target(nat_device("tcp:[fd42::1]:80", "tcp:[::]:80"), bare)


def test_only_bridged_and_routed_nics_count() -> None:
    inst = instance(
        Nic("eth0", "macvlan", "10.0.0.5"),
        Nic("eth1", "physical", "10.0.0.6"),
        Nic("eth2", "routed", "10.0.0.7"),
    )
    with pytest.raises(DeviceStartError, match="must be one of"):
        resolve_nat_target(nat_device("tcp:192.0.2.2:80", "tcp:10.0.0.5:80"), inst)
    assert str(resolve_nat_target(nat_device("tcp:192.0.2.2:80", "tcp:0.0.0.0:80"), inst)
               .address) == "10.0.0.7"


def test_wildcard_picks_nics_in_name_order() -> None:
    # LXD walks a Go map (random); we sort by NIC name.
    inst = instance(Nic("eth9", "bridged", "10.0.0.9"), Nic("eth1", "bridged", "10.0.0.1"),
                    Nic("eth5", "bridged"))
    for _ in range(3):
        t = resolve_nat_target(nat_device("udp:192.0.2.2:53", "udp:0.0.0.0:53"), inst)
        assert (t.nic.name, str(t.address)) == ("eth1", "10.0.0.1")


def test_ip_equality_not_string_equality() -> None:
    # LXD quirk §9.3: a plain string compare rejects another spelling of the same IP.
    inst = instance(Nic("eth0", "bridged", None, "2001:db8::100"))
    t = resolve_nat_target(nat_device("tcp:[::1]:80", "tcp:[2001:0db8:0::100]:80"), inst)
    assert str(t.address) == "2001:db8::100"
    # ... and any spelling of the unspecified address is a wildcard.
    t = resolve_nat_target(nat_device("tcp:[::1]:80", "tcp:[0:0::0]:80"), inst)
    assert str(t.address) == "2001:db8::100"


def test_vm_is_resolved_like_a_container() -> None:
    vm = instance(Nic("enp5s0", "bridged", "10.1.1.2"), name="v1", vm=True)
    assert str(resolve_nat_target(nat_device("tcp:192.0.2.2:80", "tcp:0.0.0.0:80"), vm)
               .address) == "10.1.1.2"


def test_unparseable_nic_address_is_skipped() -> None:
    inst = instance(Nic("eth0", "bridged", "10.0.0.5/24"), Nic("eth1", "bridged", "10.0.0.6"))
    assert str(resolve_nat_target(nat_device("tcp:192.0.2.2:80", "tcp:0.0.0.0:80"), inst)
               .address) == "10.0.0.6"


def test_empty_connect_host_is_not_a_wildcard() -> None:
    # LXD (spec §9.7): `Connect IP "" must be ...`.
    with pytest.raises(DeviceStartError, match=r'^Connect IP "" must be one of'):
        resolve_nat_target(nat_device("tcp:192.0.2.2:80", "tcp::80"), C1)


def test_ipv4_mapped_listen_counts_as_ipv4() -> None:
    t = resolve_nat_target(nat_device("tcp:[::ffff:192.0.2.2]:80", "tcp:10.123.0.10:80"), C1)
    assert t.version == 4
