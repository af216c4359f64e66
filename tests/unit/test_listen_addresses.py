"""LXD's util.ListenAddresses, from strings."""

from lxdproxy.api.listen_addresses import interface_ips, listen_addresses

IFACES = ["127.0.0.1", "198.18.0.1", "10.1.2.3", "169.254.1.1", "::1", "fd42::1", "fe80::1%eth0",
          "2001:db8::5"]


def test_a_specific_address_is_listed_as_given() -> None:
    assert listen_addresses("198.18.0.1", 8443, IFACES) == ["198.18.0.1:8443"]
    assert listen_addresses("fd42::1", 8443, IFACES) == ["[fd42::1]:8443"]


def test_wildcards_list_global_unicast_addresses_of_every_interface() -> None:
    v4 = ["198.18.0.1:8443", "10.1.2.3:8443"]  # private ranges are global unicast in Go
    v6 = ["[fd42::1]:8443", "[2001:db8::5]:8443"]
    assert listen_addresses("0.0.0.0", 8443, IFACES) == v4  # IPv4 only
    for host in ("::", "[::]", ""):
        assert listen_addresses(host, 8443, IFACES) == [*v4, *v6]


def test_this_namespace_has_at_least_loopback() -> None:
    assert "127.0.0.1" in interface_ips()
