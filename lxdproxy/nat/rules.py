"""The nftables rule set LXD installs for a NAT proxy device (pure: no I/O).

Shape (spec §5.1, LXD's nftablesNetProxyNAT template): table ``inet <table>``, three base chains
``prert.<label>`` (nat/prerouting/-100), ``out.<label>`` (nat/output/-100) and
``pstrt.<label>`` (nat/postrouting/100); the same DNAT rules in prert and out, and one hairpin
masquerade per contiguous target port range in pstrt. With table ``lxd`` ``nft list ruleset``
reads exactly as LXD's does.

What we apply is libnftables JSON built from values (``to_json``), never text with user input
pasted in; ``to_text`` renders the same commands in nft syntax for display (``nat show``). The
rule text is the form ``nft list`` prints back (``dnat ip to``), so it can be compared with it.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any

from lxdproxy.config.model import ConnType, ProxyDevice
from lxdproxy.errors import DeviceStartError
from lxdproxy.instances.model import Instance
from lxdproxy.nat.ports import PortRange, optimised_dnat_ranges, port_ranges_from_slice
from lxdproxy.nat.target import (
    IPAddress,
    NatTarget,
    ip_version,
    is_wildcard,
    parse_ip,
    resolve_nat_target,
)

DEFAULT_TABLE = "lxdproxy"  # never LXD's own `lxd` table unless asked for
LXD_TABLE = "lxd"  # LXD's own: there the rules stay byte-identical to LXD's (no counters)
FAMILY = "inet"

# nft's unquoted identifier grammar is [A-Za-z_.][A-Za-z0-9/_.-]*. We keep names inside it
# (minus "/") so that `nft list ruleset` output stays valid nft input (`nft -f` can restore it):
# libnftables' JSON would take any name, but the listing prints names unquoted.
_NAME_CHARS = re.compile(r"[A-Za-z0-9_.\-]+")
_TABLE_NAME = re.compile(r"[A-Za-z_.][A-Za-z0-9_.\-]*")
NFT_NAME_MAX = 255  # NFT_{TABLE,CHAIN}_MAXNAMELEN is 256 bytes including the NUL


class Hook(enum.Enum):
    """The three base chains of a device: (chain prefix, hook, priority) as LXD creates them."""

    PREROUTING = ("prert", "prerouting", -100)
    OUTPUT = ("out", "output", -100)
    POSTROUTING = ("pstrt", "postrouting", 100)

    def __init__(self, prefix: str, hook: str, priority: int) -> None:
        self.prefix = prefix
        self.hook = hook
        self.priority = priority


CHAIN_PREFIXES = tuple(h.prefix for h in Hook)
LABEL_MAX = NFT_NAME_MAX - max(len(p) + 1 for p in CHAIN_PREFIXES)


def _quote(text: str) -> str:
    """Double-quoted and escaped like Go's %q, so control characters show in messages."""
    return json.dumps(text)


def device_label(instance_name: str, device_name: str, project: str = "default") -> str:
    """LXD's instanceDeviceLabel: ``<instance>.<device>``, project-prefixed outside default."""
    prefix = "" if project == "default" else f"{project}_"
    return f"{prefix}{instance_name}.{device_name}"


def check_label(label: str) -> None:
    """Reject labels that nft would print unparseably or that exceed its name limit."""
    if not _NAME_CHARS.fullmatch(label):
        raise DeviceStartError(
            f"Cannot use NAT for instance device {_quote(label)}: instance, device and project "
            'names may only contain ASCII letters, digits, "_", "." and "-" in NAT mode'
        )
    if len(label) > LABEL_MAX:
        raise DeviceStartError(
            f"Cannot use NAT for instance device {_quote(label)}: the label is {len(label)} "
            f"characters long, nftables chain names allow {LABEL_MAX} after the chain prefix"
        )


def check_table_name(table: str) -> None:
    if not _TABLE_NAME.fullmatch(table) or len(table) > NFT_NAME_MAX:
        raise DeviceStartError(f"Invalid nftables table name {_quote(table)}")


def chain_name(hook: Hook, label: str) -> str:
    return f"{hook.prefix}.{label}"


@dataclass(frozen=True)
class DnatRule:
    """Listen ports -> target. A multi-port ``target`` means "same ports" (no port in dnat)."""

    listen: PortRange
    target: PortRange


@dataclass(frozen=True)
class NatRuleSet:
    table: str
    label: str
    protocol: ConnType  # TCP or UDP
    version: int  # 4 or 6
    listen_ip: IPAddress | None  # None: wildcard listen (user.lxdproxy.nat_wildcard)
    target: NatTarget
    listen_ports: tuple[int, ...]
    target_ports: tuple[int, ...]
    dnat: tuple[DnatRule, ...]
    masquerade: tuple[PortRange, ...]
    # An nft `counter` on each DNAT rule (metrics). A NAT chain sees only the first packet of
    # each flow (conntrack handles the rest), so it counts flows' first packets and bytes.
    counters: bool = True

    # -- names -------------------------------------------------------------------------------
    @property
    def family_kw(self) -> str:
        return "ip" if self.version == 4 else "ip6"

    @property
    def target_ip(self) -> IPAddress:
        return self.target.address

    def chain(self, hook: Hook) -> str:
        return chain_name(hook, self.label)

    @property
    def chains(self) -> tuple[str, ...]:
        return tuple(self.chain(h) for h in Hook)

    # -- rule text (as `nft list` prints it) --------------------------------------------------
    def _dest_text(self, rule: DnatRule) -> str:
        ip = str(self.target_ip)
        if rule.target.size > 1:
            return ip  # identical ranges: keep the port (LXD's targetDest without a port)
        if self.version == 6:
            return f"[{ip}]:{rule.target.start}"
        return f"{ip}:{rule.target.start}"

    def _daddr_text(self, hook: Hook) -> str:
        fam = self.family_kw
        if self.listen_ip is not None:
            return f"{fam} daddr {self.listen_ip}"
        # Incus's wildcard NAT: any local address; in output, not the loopback net (nft drops
        # the now redundant `meta nfproto` there when it lists the rule).
        if hook is Hook.OUTPUT:
            loop = "127.0.0.0/8" if self.version == 4 else "::1"
            return f"{fam} daddr != {loop} fib daddr type local"
        return f"meta nfproto ipv{self.version} fib daddr type local"

    def rule_texts(self, hook: Hook) -> tuple[str, ...]:
        proto = self.protocol.value
        fam = self.family_kw
        if hook is Hook.POSTROUTING:
            t = self.target_ip
            return tuple(
                f"{fam} saddr {t} {fam} daddr {t} {proto} dport {r.text()} masquerade"
                for r in self.masquerade
            )
        counter = "counter packets 0 bytes 0 " if self.counters else ""
        return tuple(
            f"{self._daddr_text(hook)} {proto} dport {r.listen.text()} "
            f"{counter}dnat {fam} to {self._dest_text(r)}"
            for r in self.dnat
        )

    def to_text(self) -> str:
        """The transaction in nft syntax (one `nft -f` script), for display only."""
        head = f"{FAMILY} {self.table}"
        lines = [f"add table {head}"]
        for h in Hook:
            lines.append(
                f"add chain {head} {self.chain(h)} {{ type nat hook {h.hook} priority "
                f"{h.priority}; policy accept; }}"
            )
        lines += [f"flush chain {head} {self.chain(h)}" for h in Hook]
        for h in Hook:
            lines += [f"add rule {head} {self.chain(h)} {text}" for text in self.rule_texts(h)]
        return "\n".join(lines) + "\n"

    # -- libnftables JSON ---------------------------------------------------------------------
    def _match(self, left: dict[str, Any], right: Any, op: str = "==") -> dict[str, Any]:
        return {"match": {"op": op, "left": left, "right": right}}

    def _payload(self, protocol: str, field: str) -> dict[str, Any]:
        return {"payload": {"protocol": protocol, "field": field}}

    def _ports(self, r: PortRange) -> Any:
        return r.start if r.size == 1 else {"range": [r.start, r.end]}

    def _daddr_exprs(self, hook: Hook) -> list[dict[str, Any]]:
        fam = self.family_kw
        if self.listen_ip is not None:
            return [self._match(self._payload(fam, "daddr"), str(self.listen_ip))]
        exprs = [self._match({"meta": {"key": "nfproto"}}, f"ipv{self.version}")]
        if hook is Hook.OUTPUT:
            loop = {"prefix": {"addr": "127.0.0.0", "len": 8}} if self.version == 4 else "::1"
            exprs.append(self._match(self._payload(fam, "daddr"), loop, op="!="))
        exprs.append(self._match({"fib": {"result": "type", "flags": ["daddr"]}}, "local"))
        return exprs

    def rule_exprs(self, hook: Hook) -> tuple[list[dict[str, Any]], ...]:
        proto = self.protocol.value
        fam = self.family_kw
        if hook is Hook.POSTROUTING:
            t = str(self.target_ip)
            return tuple(
                [
                    self._match(self._payload(fam, "saddr"), t),
                    self._match(self._payload(fam, "daddr"), t),
                    self._match(self._payload(proto, "dport"), self._ports(r)),
                    {"masquerade": None},
                ]
                for r in self.masquerade
            )
        out = []
        for r in self.dnat:
            dnat: dict[str, Any] = {"family": fam, "addr": str(self.target_ip)}
            if r.target.size == 1:
                dnat["port"] = r.target.start
            dport = self._match(self._payload(proto, "dport"), self._ports(r.listen))
            counter = [{"counter": None}] if self.counters else []
            out.append([*self._daddr_exprs(hook), dport, *counter, {"dnat": dnat}])
        return tuple(out)

    def to_json(self) -> dict[str, Any]:
        """One atomic libnftables transaction: add table, add+flush the 3 chains, add rules."""
        base = {"family": FAMILY, "table": self.table}
        cmds: list[dict[str, Any]] = [{"add": {"table": {"family": FAMILY, "name": self.table}}}]
        for h in Hook:
            chain = {**base, "name": self.chain(h), "type": "nat", "hook": h.hook}
            cmds.append({"add": {"chain": {**chain, "prio": h.priority, "policy": "accept"}}})
        cmds += [{"flush": {"chain": {**base, "name": self.chain(h)}}} for h in Hook]
        for h in Hook:
            cmds += [
                {"add": {"rule": {**base, "chain": self.chain(h), "expr": expr}}}
                for expr in self.rule_exprs(h)
            ]
        return {"nftables": cmds}


def build_nat_ruleset(
    device: ProxyDevice,
    instance: Instance,
    device_name: str,
    *,
    table: str = DEFAULT_TABLE,
    target: NatTarget | None = None,
) -> NatRuleSet:
    """The rules a validated NAT device needs; raises DeviceStartError for what only the
    instance can decide (its static addresses) and names nft cannot carry.

    config/ (the one gate) already refused what LXD refuses at validation or at start for a NAT
    device: non-tcp/udp pairs, a wildcard or empty listen host without the opt-in, mixed IP
    versions, port counts that cannot map, ports outside 1-65535."""
    listen, connect = device.listen, device.connect
    assert listen.conn_type is connect.conn_type and listen.conn_type is not ConnType.UNIX
    assert listen.ports and len(connect.ports) in (1, len(listen.ports))
    wildcard = is_wildcard(listen)
    assert device.nat_wildcard or not wildcard

    label = device_label(instance.name, device_name, instance.project)
    check_table_name(table)
    if not instance.name or not device_name or not instance.project:
        raise DeviceStartError(f"Cannot use NAT for instance device {_quote(label)}: empty name")
    check_label(label)

    # target: the NIC's current address (user.lxdproxy.nat_dynamic), else its static one.
    if target is None:
        target = resolve_nat_target(device, instance)
    version = ip_version(listen, connect)
    assert target.version == version

    pairs = optimised_dnat_ranges(listen.ports, connect.ports)
    return NatRuleSet(
        table=table,
        label=label,
        protocol=listen.conn_type,
        version=version,
        listen_ip=None if wildcard else parse_ip(listen.address),
        target=target,
        listen_ports=listen.ports,
        target_ports=connect.ports,
        dnat=tuple(DnatRule(listen=lr, target=tr) for lr, tr in pairs),
        masquerade=port_ranges_from_slice(connect.ports),
        counters=table != LXD_TABLE,
    )
