"""`lxdproxy config device|trust ...`: lxc's device commands against the daemon's unix socket.

Same flow and messages as lxc 5.0 (lxc/config_device.go): GET the instance, change the local
device map on the client side, PUT the writable object back with ``If-Match: <ETag>``, wait for
the operation. Errors print as ``Error: <message>`` on stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from lxdproxy.cli.api_client import ApiError, DaemonClient, default_socket, path_segment
from lxdproxy.daemon import DEFAULT_STATE_DIR

WRITABLE_KEYS = ("architecture", "config", "devices", "ephemeral", "profiles", "stateful",
                 "description")


class CliError(Exception):
    """A client-side check failed (lxc's own wording)."""


# -- YAML output (what Go's yaml.v2 prints for map[string]map[string]string) ------------------

_YAML_BOOL_NULL = {
    "y", "Y", "yes", "Yes", "YES", "n", "N", "no", "No", "NO", "true", "True", "TRUE",
    "false", "False", "FALSE", "on", "On", "ON", "off", "Off", "OFF",
    "~", "null", "Null", "NULL", ".inf", ".Inf", ".INF", "-.inf", "-.Inf", "-.INF",
    "+.inf", "+.Inf", "+.INF", ".nan", ".NaN", ".NAN",
}
_YAML_INT = re.compile(r"[-+]?(0[xX][0-9a-fA-F]+|0[bB][01]+|0[oO]?[0-7]+|[0-9]+)")
_YAML_BASE60 = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")
_YAML_INDICATORS = set("#,[]{}&*!|>'\"%@`")


def _resolves_to_non_string(text: str) -> bool:
    if text == "" or text in _YAML_BOOL_NULL or _YAML_BASE60.fullmatch(text):
        return True
    if text[0] not in "+-.0123456789":
        return False
    plain = text.replace("_", "")
    if _YAML_INT.fullmatch(plain):
        return True
    try:
        float(plain)
    except ValueError:
        return False
    return True


def _plain_allowed(text: str) -> bool:
    if text[0] in _YAML_INDICATORS or text[0].isspace() or text[-1].isspace():
        return False
    if text[:3] in ("---", "...") or (text[0] in "-?:" and (len(text) == 1 or text[1] == " ")):
        return False
    if ": " in text or " #" in text or text.endswith(":") or "\t" in text:
        return False
    return text.isprintable()


def yaml_scalar(text: str) -> str:
    if "\n" in text or not text.isprintable() or _resolves_to_non_string(text):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if _plain_allowed(text):
        return text
    return "'" + text.replace("'", "''") + "'"


def devices_yaml(devices: dict[str, dict[str, str]]) -> str:
    if not devices:
        return "{}\n"
    lines = []
    for name in sorted(devices):
        conf = devices[name] or {}
        if not conf:
            lines.append(f"{yaml_scalar(name)}: {{}}")
            continue
        lines.append(f"{yaml_scalar(name)}:")
        lines.extend(f"  {yaml_scalar(k)}: {yaml_scalar(str(v))}" for k, v in sorted(conf.items()))
    return "\n".join(lines) + "\n"


# -- argument parsing ----------------------------------------------------------------------------

def _key_values(items: list[str], no_equals: str) -> dict[str, str]:
    """``key=value`` items; ``no_equals`` is the error for one without "=" (``{item}`` in it)."""
    result = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise CliError(no_equals.format(item=item))
        result[key] = value
    return result


def parse_properties(props: list[str]) -> dict[str, str]:
    """``key=value`` pairs for add/override (lxc: "No value found in %q")."""
    return _key_values(props, 'No value found in "{item}"')


def parse_set_arguments(args: list[str]) -> dict[str, str]:
    """lxc's getConfig: ``key=value...``, or the legacy single ``key value``."""
    if len(args) == 2 and "=" not in args[0]:
        return {args[0]: args[1]}
    return _key_values(args, "Invalid key=value configuration: {item}")


def socket_option(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """``--socket`` on ``parser`` itself, and a parent parser for its subcommands: accepted before
    or after the subcommand (SUPPRESS keeps an outer value)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS, metavar="PATH",
                        help=f"daemon socket (env LXDPROXY_SOCKET, default {default_socket()})")
    parser.add_argument("--socket", default=None, metavar="PATH", help=argparse.SUPPRESS)
    return common


def add_arguments(parser: argparse.ArgumentParser) -> None:
    common = socket_option(parser)
    sub = parser.add_subparsers(dest="config_command", metavar="COMMAND")

    device = sub.add_parser("device", help="manage instance devices (like lxc config device)")
    dsub = device.add_subparsers(dest="device_command", metavar="COMMAND")
    p = dsub.add_parser("add", parents=[common], help="add an instance device")
    p.add_argument("instance")
    p.add_argument("device")
    p.add_argument("type")
    p.add_argument("props", nargs="*", metavar="key=value")
    p = dsub.add_parser("get", parents=[common], help="get a device configuration key")
    p.add_argument("instance")
    p.add_argument("device")
    p.add_argument("key")
    p = dsub.add_parser("list", aliases=["ls"], parents=[common], help="list instance devices")
    p.add_argument("instance")
    p = dsub.add_parser("override", parents=[common],
                        help="copy a profile device and override configuration keys")
    p.add_argument("instance")
    p.add_argument("device")
    p.add_argument("props", nargs="*", metavar="key=value")
    p = dsub.add_parser("remove", aliases=["rm"], parents=[common], help="remove devices")
    p.add_argument("instance")
    p.add_argument("devices", nargs="+", metavar="device")
    p = dsub.add_parser("set", parents=[common], help="set device configuration keys")
    p.add_argument("instance")
    p.add_argument("device")
    p.add_argument("props", nargs="+", metavar="key=value")
    p = dsub.add_parser("show", parents=[common], help="show the local devices as YAML")
    p.add_argument("instance")
    p = dsub.add_parser("unset", parents=[common], help="unset a device configuration key")
    p.add_argument("instance")
    p.add_argument("device")
    p.add_argument("key")

    trust = sub.add_parser("trust", help="manage trusted client certificates (HTTPS API)")
    tcommon = argparse.ArgumentParser(add_help=False)
    tcommon.add_argument("--state-dir", default=argparse.SUPPRESS, metavar="DIR",
                         help=f"the daemon's state directory (default {DEFAULT_STATE_DIR}): the "
                              "trust store is a file there, which the daemon re-reads")
    trust.add_argument("--state-dir", default=DEFAULT_STATE_DIR, help=argparse.SUPPRESS)
    tsub = trust.add_subparsers(dest="trust_command", metavar="COMMAND")
    p = tsub.add_parser("add", parents=[tcommon], help="trust a client certificate (PEM file)")
    p.add_argument("cert_file")
    p.add_argument("--name", default=None)
    tsub.add_parser("list", aliases=["ls"], parents=[tcommon], help="list trusted certificates")
    p = tsub.add_parser("remove", aliases=["rm"], parents=[tcommon],
                        help="stop trusting a certificate")
    p.add_argument("fingerprint")


# -- device commands ---------------------------------------------------------------------------

def _get_instance(client: DaemonClient, name: str) -> tuple[dict[str, Any], str | None]:
    response = client.get(f"/1.0/instances/{path_segment(name)}")
    inst = response.metadata if isinstance(response.metadata, dict) else {}
    inst.setdefault("devices", {})
    inst["devices"] = inst["devices"] or {}
    return inst, response.etag


def _update_instance(client: DaemonClient, name: str, inst: dict[str, Any],
                     etag: str | None) -> None:
    body = {k: inst[k] for k in WRITABLE_KEYS if k in inst}
    client.write("PUT", f"/1.0/instances/{path_segment(name)}", body, etag)


def _local_device(inst: dict[str, Any], device: str, verb: str) -> dict[str, str]:
    if device in inst["devices"]:
        return inst["devices"][device]
    if device in (inst.get("expanded_devices") or {}):
        if verb == "retrieved":
            raise CliError("Device from profile(s) cannot be retrieved for individual instance")
        raise CliError(f"Device from profile(s) cannot be {verb} for individual instance. "
                       "Override device or modify profile instead")
    raise CliError("Device doesn't exist")


def run_device(client: DaemonClient, args: argparse.Namespace) -> int:
    cmd, name = args.device_command, args.instance
    if cmd == "add":
        device = {"type": args.type, **parse_properties(args.props)}
        inst, etag = _get_instance(client, name)
        if args.device in inst["devices"]:
            raise CliError("The device already exists")
        inst["devices"][args.device] = device
        _update_instance(client, name, inst, etag)
        print(f"Device {args.device} added to {name}")
    elif cmd == "get":
        inst, _ = _get_instance(client, name)
        dev = _local_device(inst, args.device, "retrieved")
        print(dev.get(args.key, ""))
    elif cmd in ("list", "ls"):
        inst, _ = _get_instance(client, name)
        print("\n".join(sorted(inst["devices"])))
    elif cmd == "override":
        props = parse_properties(args.props)
        inst, etag = _get_instance(client, name)
        if args.device in inst["devices"]:
            raise CliError("The device already exists")
        expanded = inst.get("expanded_devices") or {}
        if args.device not in expanded:
            raise CliError("The profile device doesn't exist")
        inst["devices"][args.device] = {**expanded[args.device], **props}
        _update_instance(client, name, inst, etag)
        print(f"Device {args.device} overridden for {name}")
    elif cmd in ("remove", "rm"):
        inst, etag = _get_instance(client, name)
        for dev in args.devices:
            if dev not in inst["devices"]:
                if dev in (inst.get("expanded_devices") or {}):
                    raise CliError("Device from profile(s) cannot be removed from individual "
                                   "instance. Override device or modify profile instead")
                raise CliError("Device doesn't exist")
            del inst["devices"][dev]
        _update_instance(client, name, inst, etag)
        print(f"Device {', '.join(args.devices)} removed from {name}")
    elif cmd in ("set", "unset"):
        keys = parse_set_arguments(args.props) if cmd == "set" else {args.key: ""}
        inst, etag = _get_instance(client, name)
        dev = _local_device(inst, args.device, "modified")
        for key, value in keys.items():
            if cmd == "unset":
                # lxc sends key="" and leaves it to the server; we drop the key so `show`
                # does not keep an empty entry.
                dev.pop(key, None)
            else:
                dev[key] = value
        _update_instance(client, name, inst, etag)
    elif cmd == "show":
        inst, _ = _get_instance(client, name)
        sys.stdout.write(devices_yaml(inst["devices"]))
    else:
        raise CliError("Missing device command (add, get, list, override, remove, set, show, "
                       "unset)")
    return 0


# -- trust commands ----------------------------------------------------------------------------

def _cert_summary(pem: str) -> tuple[str, str]:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    cert = x509.load_pem_x509_certificate(pem.encode())
    common = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return (str(common[0].value) if common else "",
            cert.not_valid_after_utc.strftime("%b %d, %Y at %I:%M%p (UTC)"))


def _print_trust_table(entries: list[dict[str, Any]]) -> None:
    rows = [("TYPE", "NAME", "COMMON NAME", "FINGERPRINT", "EXPIRY DATE")]
    for e in entries:
        common, expiry = _cert_summary(e.get("certificate", ""))
        rows.append((e.get("type", ""), e.get("name", ""), common,
                     e.get("fingerprint", "")[:12], expiry))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def run_trust(args: argparse.Namespace) -> int:
    cmd = args.trust_command
    if cmd is None:
        raise CliError("Missing trust command (add, list, remove)")
    from lxdproxy.api.tls import TrustStore

    store = TrustStore(args.state_dir)
    if cmd == "add":
        store.add(args.cert_file, name=args.name)
    elif cmd in ("list", "ls"):
        _print_trust_table([e.to_lxd() for e in store.list()])
    else:
        store.remove(args.fingerprint)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        if args.config_command == "device":
            return run_device(DaemonClient(args.socket), args)
        if args.config_command == "trust":
            return run_trust(args)
        raise CliError("Missing command (device, trust)")
    except (ApiError, CliError) as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - the CLI never shows a traceback
        message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
        print(f"Error: {message}", file=sys.stderr)
        return 1
