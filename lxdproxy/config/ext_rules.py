"""Cross-field rules of lxdproxy's own extension keys (``user.lxdproxy.*``), after LXD's rules.

Each refuses a combination that could never do what the key promises, in words that name the
key; none of them can change what LXD itself accepts, since LXD's rules ran first.
"""

from __future__ import annotations

from collections.abc import Mapping

from lxdproxy.config.gonet import to_ipaddress
from lxdproxy.config.gostrconv import go_parse_uint
from lxdproxy.config.keys import EXT_BIND_GID, EXT_BIND_UID, EXT_NAT_DYNAMIC, is_true
from lxdproxy.config.model import ProxyAddress
from lxdproxy.errors import ConfigError


def check_nat_dynamic(raw: Mapping[str, str], connect: ProxyAddress, nat: bool) -> None:
    if not is_true(raw.get(EXT_NAT_DYNAMIC, "")):
        return
    if not nat:
        raise ConfigError(f"{EXT_NAT_DYNAMIC} needs nat=true")
    ip = to_ipaddress(connect.address) if connect.address else None
    if ip is None or not ip.is_unspecified:
        # The target is whatever address the NIC has now: a fixed connect IP would contradict it.
        raise ConfigError(
            f'{EXT_NAT_DYNAMIC} needs a wildcard connect address ("0.0.0.0" or "::"): '
            "the target is the instance's current address"
        )


def _id(raw: Mapping[str, str], key: str) -> int | None:
    value = raw.get(key, "")
    return go_parse_uint(value, 10, 32) if value else None


def check_bind_ids(raw: Mapping[str, str], nat: bool) -> None:
    bind_uid, bind_gid = _id(raw, EXT_BIND_UID), _id(raw, EXT_BIND_GID)
    if bind_uid is None and bind_gid is None:
        return
    name = EXT_BIND_UID if bind_uid is not None else EXT_BIND_GID
    if nat:
        raise ConfigError(f"{name} cannot be used in nat mode: the kernel forwards, "
                          "no socket listens")
    # The socket file is made by bind_uid, which (not being root) can only chown it to itself
    # and to its own group: say so now rather than fail at every start with EPERM.
    if bind_uid:
        uid, gid = _id(raw, "uid"), _id(raw, "gid")
        if uid is not None and uid != bind_uid:
            raise ConfigError(f'uid "{uid}" cannot be set on a socket made by {EXT_BIND_UID} '
                              f'"{bind_uid}": only root may give a file to another user')
        if gid is not None and gid != (bind_gid or 0):
            raise ConfigError(f'gid "{gid}" cannot be set on a socket made by {EXT_BIND_UID} '
                              f'"{bind_uid}" and {EXT_BIND_GID} "{bind_gid or 0}": only root '
                              "may give a file to another group")


__all__ = ["check_bind_ids", "check_nat_dynamic"]
