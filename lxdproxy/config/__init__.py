"""Pure proxy-device configuration: address grammar, keys, LXD-exact validation."""

from lxdproxy.config.address import format_address, parse_address
from lxdproxy.config.model import (
    BindSide,
    ConnType,
    InstanceType,
    ProxyAddress,
    ProxyDevice,
    ProxyProtocol,
)
from lxdproxy.config.validate import validate_proxy_device

__all__ = [
    "BindSide",
    "ConnType",
    "InstanceType",
    "ProxyAddress",
    "ProxyDevice",
    "ProxyProtocol",
    "format_address",
    "parse_address",
    "validate_proxy_device",
]
