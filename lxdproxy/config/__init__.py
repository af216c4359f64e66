"""Pure proxy-device configuration: address grammar, keys, LXD-exact validation.

The gate's entry points; the values they produce (ProxyDevice, ProxyAddress, ...) are in
``lxdproxy.config.model``."""

from lxdproxy.config.address import format_address, parse_address
from lxdproxy.config.validate import validate_proxy_device

__all__ = ["format_address", "parse_address", "validate_proxy_device"]
