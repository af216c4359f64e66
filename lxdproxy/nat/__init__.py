"""NAT mode (``nat=true``): the proxy device as nftables DNAT rules, like LXD's.

- ``ports``, ``target``, ``rules``: pure. ``build_nat_ruleset(device, instance, device_name,
  table=...)`` -> ``NatRuleSet`` (``to_json()`` for libnftables, ``to_text()`` for display).
- ``apply``: ``NatApplier(net_path, table)`` applies/removes rule sets inside a network namespace.
- ``conntrack``, ``hairpin``: netlink side effects (UDP flow flush, bridge port hairpin).
- ``runtime``: ``NatRuntime``, the daemon's asyncio API: apply, remove, periodic repair.

Submodules are imported on demand so the pure parts don't pull in libnftables or pyroute2.
"""
