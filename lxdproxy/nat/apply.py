"""Apply and remove NAT rule sets with libnftables, inside a given network namespace.

libnftables binds its netlink socket when the context is created (nft_ctx_new), not per command:
measured here with a context created in netns A and used from a thread that had since moved to
netns B, every command still landed in A. So each NatApplier creates its ``nftables.Nftables``
inside the netns (via ``netns_executor(net_path)``) and then does all of its work there; the
context is not thread-safe, so one lock serialises it.

All methods are blocking (milliseconds) and must not be called from a thread that runs an
asyncio loop only because pyroute2 (conntrack) drives its own loop; ``lxdproxy.nat.runtime`` wraps
them for the daemon.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import nftables

from lxdproxy.config.model import ConnType
from lxdproxy.errors import DeviceStartError
from lxdproxy.nat.conntrack import UdpFlowMatch, flush_udp_flows
from lxdproxy.nat.rules import (
    CHAIN_PREFIXES,
    DEFAULT_TABLE,
    FAMILY,
    Hook,
    NatRuleSet,
    chain_name,
    check_table_name,
)
from lxdproxy.netns import netns_executor, ns_identity

log = logging.getLogger(__name__)
T = TypeVar("T")

# LXD also clears chains left in `ip`/`ip6` tables of the same name by older versions.
_CLEAR_FAMILIES = ("inet", "ip", "ip6")


class NftError(DeviceStartError):
    """libnftables refused a command (message: nft's own error text)."""


class NatApplier:
    """The NAT devices of one table in one network namespace.

    ``apply`` records each rule set, so ``check_and_repair`` can put back rules that someone
    removed (``nft flush ruleset``). The daemon should call ``check_and_repair`` periodically
    (``lxdproxy.nat.runtime.watch(interval)`` does that for every applier).
    """

    def __init__(self, net_path: str | None = None, table: str = DEFAULT_TABLE) -> None:
        check_table_name(table)
        self.net_path = net_path
        self.table = table
        self._executor = netns_executor(net_path)
        self._nft: nftables.Nftables | None = None
        self._lock = threading.RLock()
        self._applied: dict[str, NatRuleSet] = {}
        # What `nft -j list` showed of each device's chains right after we applied them: the
        # JSON we apply, normalised by nft itself (it rewrites expressions on the way in), so
        # repair compares content, not counts (issue 12: a hand-changed DNAT target stayed).
        self._listed: dict[str, str] = {}
        self._created_table = False  # we created it, so we may delete it once empty
        self._worker: ThreadPoolExecutor | None = None

    # -- plumbing ---------------------------------------------------------------------------------
    def call_in_namespace(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` inside the namespace (blocking), serialised with every other call."""
        with self._lock:
            if _loop_running() and self._executor.identity == _thread_netns():
                # The daemon's own netns runs inline: keep pyroute2's private event loop off
                # this thread's running one by using a worker (same netns, so same bindings).
                if self._worker is None:
                    self._worker = ThreadPoolExecutor(1, thread_name_prefix="nat")
                return self._worker.submit(fn, *args).result()
            return self._executor.call(fn, *args)

    def _ctx(self) -> nftables.Nftables:
        # Called inside the netns thread: this is where the netlink socket gets bound.
        if self._nft is None:
            nft = nftables.Nftables()
            nft.set_json_output(True)
            self._nft = nft
        return self._nft

    def _run(self, cmd: dict[str, Any]) -> dict[str, Any]:
        rc, out, err = self._ctx().json_cmd(cmd)
        if rc != 0:
            raise NftError(f"nftables: {err.strip() or f'error {rc}'}")
        return out if isinstance(out, dict) else {}

    def _list_table(self, family: str) -> list[dict[str, Any]] | None:
        """The table's objects (libnftables JSON), or None when there is no such table."""
        cmd = {"nftables": [{"list": {"table": {"family": family, "name": self.table}}}]}
        rc, out, _err = self._ctx().json_cmd(cmd)
        if rc != 0:
            return None
        return [o for o in out.get("nftables", []) if "metainfo" not in o]

    @staticmethod
    def _chains(objects: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        return {o["chain"]["name"]: o["chain"] for o in objects if "chain" in o}

    @staticmethod
    def _rules(objects: list[dict[str, Any]], chain: str) -> list[dict[str, Any]]:
        return [o["rule"] for o in objects if "rule" in o and o["rule"]["chain"] == chain]

    # -- apply ------------------------------------------------------------------------------------
    def apply(self, ruleset: NatRuleSet) -> None:
        """Install (or replace) one device's chains in one atomic transaction."""
        if ruleset.table != self.table:
            raise ValueError(f"rule set is for table {ruleset.table!r}, applier for {self.table!r}")
        self.call_in_namespace(self._apply_in_ns, ruleset)

    def _apply_in_ns(self, ruleset: NatRuleSet) -> None:
        existed = self._list_table(FAMILY) is not None
        self._run(ruleset.to_json())
        if not existed:
            self._created_table = True
        self._applied[ruleset.label] = ruleset
        self._listed[ruleset.label] = self._content(self._list_table(FAMILY) or [], ruleset)
        # Flows that were tracked before (un-NATed) or under an older version of the rules.
        self._flush_flows([_flow_match(ruleset)])

    # -- remove -----------------------------------------------------------------------------------
    def remove(self, label: str) -> bool:
        """Delete exactly this device's chains; returns whether any existed.

        The table goes too when nothing else is left in it and it is ours: the default
        ``lxdproxy`` table is ours by name; another table (``lxd``) only if this applier created
        it, so LXD's own table survives even when it holds no other chains.
        """
        return self.call_in_namespace(self._remove_in_ns, label)

    def _remove_in_ns(self, label: str) -> bool:
        self._applied.pop(label, None)
        self._listed.pop(label, None)
        names = {chain_name(h, label) for h in Hook}
        cmds: list[dict[str, Any]] = []
        flows: list[UdpFlowMatch] = []
        for family in _CLEAR_FAMILIES:
            objects = self._list_table(family)
            if objects is None:
                continue
            chains = self._chains(objects)
            found = [n for n in (chain_name(h, label) for h in Hook) if n in chains]
            for name in found:
                ref = {"family": family, "table": self.table, "name": name}
                cmds += [{"flush": {"chain": ref}}, {"delete": {"chain": ref}}]
            flows += _flows_from_rules(self._rules(objects, chain_name(Hook.PREROUTING, label)))
            others = [o for o in objects if "table" not in o and _object_name(o) not in names]
            if found and not others and family == FAMILY and self._owns_table():
                cmds.append({"delete": {"table": {"family": family, "name": self.table}}})
                self._created_table = False
        if not cmds:
            return False
        self._run({"nftables": cmds})
        self._flush_flows(flows)
        return True

    def _owns_table(self) -> bool:
        return self.table == DEFAULT_TABLE or self._created_table

    # -- inspection and repair --------------------------------------------------------------------
    def list_labels(self) -> list[str]:
        """Labels of the NAT proxy devices present in the table (sorted)."""
        return self.call_in_namespace(self._labels_in_ns)

    def _labels_in_ns(self) -> list[str]:
        objects = self._list_table(FAMILY) or []
        labels = set()
        for chain in self._chains(objects).values():
            prefix, _, label = chain["name"].partition(".")
            # Device labels always contain a dot (<instance>.<device>); LXD's network chains
            # (pstrt.lxdbr0) don't, and its RP-filter chains (prert.<label>) are type filter.
            if prefix in CHAIN_PREFIXES and "." in label and chain.get("type") == "nat":
                labels.add(label)
        return sorted(labels)

    def applied(self) -> dict[str, NatRuleSet]:
        return dict(self._applied)

    def _content(self, objects: list[dict[str, Any]], ruleset: NatRuleSet) -> str:
        """A device's three chains as listed: their hook settings and every rule's
        expressions (handles left out: they change on every re-apply)."""
        chains = self._chains(objects)
        content: list[Any] = []
        for hook in Hook:
            name = ruleset.chain(hook)
            chain = chains.get(name)
            if chain is None:
                content.append(None)
                continue
            settings = {k: chain.get(k) for k in ("type", "hook", "prio", "policy")}
            exprs = [_without_counts(r.get("expr", [])) for r in self._rules(objects, name)]
            content.append([settings, exprs])
        return json.dumps(content, sort_keys=True)

    def counters(self) -> dict[str, tuple[int, int]]:
        """{label: (packets, bytes)} of every applied device: the sums of the ``counter``
        statements in its prerouting and output chains (0, 0 for a rule set without them)."""
        return self.call_in_namespace(self._counters_in_ns)

    def _counters_in_ns(self) -> dict[str, tuple[int, int]]:
        if not self._applied:
            return {}
        objects = self._list_table(FAMILY) or []
        out = {}
        for label, ruleset in self._applied.items():
            packets = nbytes = 0
            for hook in (Hook.PREROUTING, Hook.OUTPUT):
                for rule in self._rules(objects, ruleset.chain(hook)):
                    for expr in rule.get("expr", []):
                        counter = expr.get("counter")
                        if isinstance(counter, dict):
                            packets += int(counter.get("packets", 0))
                            nbytes += int(counter.get("bytes", 0))
            out[label] = (packets, nbytes)
        return out

    def check_and_repair(self) -> list[str]:
        """Re-apply recorded rule sets whose chains differ in any way from what was applied
        (missing, extra or changed rules, changed chain settings); returns their labels."""
        return self.call_in_namespace(self._repair_in_ns)

    def _repair_in_ns(self) -> list[str]:
        if not self._applied:
            return []
        objects = self._list_table(FAMILY)
        chains = self._chains(objects or [])
        repaired = []
        for label, ruleset in sorted(self._applied.items()):
            if self._content(objects or [], ruleset) == self._listed.get(label):
                continue
            gone = not all(ruleset.chain(h) in chains for h in Hook)
            log.warning("NAT rules of %s %s in table %s: re-applying", label,
                        "vanished" if gone else "were changed", self.table)
            if objects is None:
                self._created_table = True
            self._run(ruleset.to_json())
            self._listed[label] = self._content(self._list_table(FAMILY) or [], ruleset)
            self._flush_flows([_flow_match(ruleset)])
            repaired.append(label)
        return repaired

    def _flush_flows(self, flows: list[UdpFlowMatch]) -> None:
        try:
            flush_udp_flows(flows)
        except OSError as exc:  # conntrack not available: the rules still work for new flows
            log.warning("could not flush conntrack entries in %s: %s", self.net_path, exc)


def _thread_netns() -> tuple[int, int]:
    return ns_identity("/proc/thread-self/ns/net")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _without_counts(exprs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rule expressions with each counter's packets/bytes left out: traffic changes them, and
    they are not part of what the rule does."""
    return [{"counter": None} if "counter" in e else e for e in exprs]


def _object_name(obj: dict[str, Any]) -> str | None:
    if "chain" in obj:
        return obj["chain"]["name"]
    if "rule" in obj:
        return obj["rule"]["chain"]  # rules of our chains go with them
    return None  # sets, maps, counters...: something else lives in the table


def _flow_match(ruleset: NatRuleSet) -> UdpFlowMatch:
    ports = frozenset(ruleset.listen_ports) if ruleset.protocol is ConnType.UDP else frozenset()
    daddr = None if ruleset.listen_ip is None else str(ruleset.listen_ip)
    return UdpFlowMatch(version=ruleset.version, daddr=daddr, ports=ports)


def _flows_from_rules(rules: list[dict[str, Any]]) -> list[UdpFlowMatch]:
    """UDP flows that a device's installed prerouting rules catch (read back from nft JSON)."""
    flows = []
    for rule in rules:
        daddr: str | None = None
        version = 4
        ports: frozenset[int] = frozenset()
        for expr in rule.get("expr", []):
            match = expr.get("match")
            if not match:
                continue
            left, right = match.get("left", {}), match.get("right")
            payload = left.get("payload") if isinstance(left, dict) else None
            if payload and payload.get("field") == "daddr" and match.get("op") == "==":
                daddr = str(right)
                version = 6 if payload.get("protocol") == "ip6" else 4
            elif payload and payload.get("protocol") == "udp" and payload.get("field") == "dport":
                if isinstance(right, int):
                    ports = frozenset({right})
                elif isinstance(right, dict) and "range" in right:
                    lo, hi = right["range"]
                    ports = frozenset(range(lo, hi + 1))
            elif "meta" in left and left["meta"].get("key") == "nfproto":
                version = 6 if right == "ipv6" else 4
        if ports:
            flows.append(UdpFlowMatch(version=version, daddr=daddr, ports=ports))
    return flows
