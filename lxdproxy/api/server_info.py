"""``GET /1.0``: what the server says about itself (shape of fixtures/rest/get-1.0.json)."""

from __future__ import annotations

import os
import platform
import socket
from typing import Any

# Advertise ONLY what is implemented: clients gate behaviour on these names.
API_EXTENSIONS: tuple[str, ...] = (
    "api_filtering",
    "etag",
    "patch",
    "network_state",
    "container_full",
    "instances",
    "instance_get_full",
    "operation_metadata_entity_url",
    "operation_wait",
    "proxy",
    "proxy_unix",
    "proxy_udp",
    "proxy_tcp_udp_multi_port_handling",
    "proxy_unix_dac_properties",
    "proxy_haproxy_protocol",
    "proxy_nat",
    "warnings",
    "metrics",
    "certificate_update",
    "certificate_token",
)

# The LXD release whose API we reproduce (the lxc/pylxd captures come from it).
SERVER_VERSION = "5.0.2"


def _os_release() -> tuple[str, str]:
    name, version = "", ""
    try:
        with open("/etc/os-release") as f:
            for line in f:
                key, _, value = line.strip().partition("=")
                if key == "NAME":
                    name = value.strip('"')
                elif key == "VERSION_ID":
                    version = value.strip('"')
    except OSError:
        pass
    return name, version


def server_info(*, trusted: bool = True, certificate_pem: str = "",
                certificate_fingerprint: str = "", addresses: list[str] | None = None,
                backend_kind: str = "local") -> dict[str, Any]:
    base: dict[str, Any] = {
        "config": {},
        "api_extensions": list(API_EXTENSIONS),
        "api_status": "stable",
        "api_version": "1.0",
        "auth": "trusted" if trusted else "untrusted",
        "public": False,
        "auth_methods": ["tls"],
    }
    if not trusted:
        # LXD shows untrusted clients only the protocol facts needed to start trusting.
        del base["config"]
        return base
    uname = platform.uname()
    os_name, os_version = _os_release()
    base["environment"] = {
        "addresses": addresses or [],
        "architectures": [uname.machine],
        "certificate": certificate_pem,  # lxc parses it when non-empty: must be PEM or ""
        "certificate_fingerprint": certificate_fingerprint,
        "driver": "lxdproxy",
        "driver_version": _own_version(),
        "firewall": "nftables",
        "kernel": uname.system,
        "kernel_architecture": uname.machine,
        "kernel_features": {},
        "kernel_version": uname.release,
        "lxc_features": {},
        "os_name": os_name,
        "os_version": os_version,
        "project": "default",
        "server": "lxdproxy",
        "server_clustered": False,
        "server_event_mode": "full-mesh",
        "server_name": socket.gethostname(),
        "server_pid": os.getpid(),
        "server_version": SERVER_VERSION,
        "storage": "",
        "storage_version": "",
        "storage_supported_drivers": [],
        "instance_backend": backend_kind,
    }
    return base


def _own_version() -> str:
    try:
        from importlib.metadata import version

        return version("lxdproxy")
    except Exception:
        return "0"
