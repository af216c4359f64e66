"""Pure proxy-device configuration: address grammar, keys, LXD-exact validation."""

from lxdproxy.config.model import (
    BindSide,
    ConnType,
    InstanceType,
    ProxyAddress,
    ProxyDevice,
    ProxyProtocol,
)

__all__ = ["BindSide", "ConnType", "InstanceType", "ProxyAddress", "ProxyDevice", "ProxyProtocol"]
