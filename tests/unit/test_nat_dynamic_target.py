"""nat_dynamic, pure parts: which NIC is followed (as Incus PR 3528) and which address counts."""

from __future__ import annotations

import ipaddress

import pytest

from lab.devices import instance
from lxdproxy.config import validate_proxy_device
from lxdproxy.errors import DeviceStartError
from lxdproxy.instances.address_follow import address_from_ip_json, address_from_state
from lxdproxy.instances.model import Nic
from lxdproxy.nat.target import dynamic_nat_nic

V4 = validate_proxy_device({"listen": "tcp:198.18.0.1:80", "connect": "tcp:0.0.0.0:80",
                            "nat": "true", "user.lxdproxy.nat_dynamic": "true"})
V6 = validate_proxy_device({"listen": "tcp:[fd42::1]:80", "connect": "tcp:[::]:80",
                            "nat": "true", "user.lxdproxy.nat_dynamic": "true"})


def test_first_bridged_nic_without_a_static_address_in_name_order() -> None:
    inst = instance(Nic("eth1", "bridged"), Nic("eth0", "bridged"), Nic("m0", "macvlan"))
    assert dynamic_nat_nic(V4, inst) == Nic("eth0", "bridged")


def test_a_static_address_wins() -> None:
    inst = instance(Nic("eth0", "bridged"), Nic("eth1", "routed", ipv4_address="198.18.0.9"))
    assert dynamic_nat_nic(V4, inst) is None  # resolved as LXD does, to 198.18.0.9
    # ...of the device's own IP version only: the IPv6 device follows eth0.
    assert dynamic_nat_nic(V6, inst) == Nic("eth0", "bridged")


@pytest.mark.parametrize("nics", [(), (Nic("eth0", "routed"),), (Nic("m0", "macvlan"),)])
def test_no_nic_qualifies(nics: tuple[Nic, ...]) -> None:
    with pytest.raises(DeviceStartError) as err:
        dynamic_nat_nic(V4, instance(*nics))
    assert err.value.message == ("Instance has no static IPv4 address and no bridged NIC whose "
                                 "address user.lxdproxy.nat_dynamic could follow")


IP_JSON = [
    {"ifname": "lo", "addr_info": [{"family": "inet", "local": "127.0.0.1", "scope": "host"}]},
    {"ifname": "eth0", "addr_info": [
        {"family": "inet6", "local": "fe80::1", "scope": "link"},
        {"family": "inet6", "local": "fd42::5", "scope": "global", "tentative": True},
        {"family": "inet6", "local": "fd42::6", "scope": "global", "deprecated": True},
        {"family": "inet6", "local": "fd42::7", "scope": "global"},
        {"family": "inet", "local": "198.18.0.100", "scope": "global"},
    ]},
]


def test_address_from_ip_json() -> None:
    assert address_from_ip_json(IP_JSON, "eth0", 4) == ipaddress.ip_address("198.18.0.100")
    assert address_from_ip_json(IP_JSON, "eth0", 6) == ipaddress.ip_address("fd42::7")
    assert address_from_ip_json(IP_JSON, "lo", 4) is None
    assert address_from_ip_json(IP_JSON, "eth9", 4) is None
    assert address_from_ip_json([], "eth0", 4) is None


def test_address_from_lxd_state() -> None:
    network = {
        "eth0": {"host_name": "veth1", "addresses": [
            {"family": "inet6", "address": "fe80::1", "scope": "link"},
            {"family": "inet", "address": "10.0.0.5", "scope": "global"}]},
        "eth1": {"host_name": "veth2", "addresses": [
            {"family": "inet", "address": "10.0.1.5", "scope": "global"}]},
    }
    assert address_from_state(network, "eth0", None, 4) == ipaddress.ip_address("10.0.0.5")
    # Found by its host-side name first (the NIC's name inside may differ).
    assert address_from_state(network, "whatever", "veth2", 4) == ipaddress.ip_address("10.0.1.5")
    assert address_from_state(network, "eth0", None, 6) is None
    assert address_from_state(None, "eth0", None, 4) is None
