"""Side-by-side benchmarks of lxdproxy against direct, socat and LXD's own forkproxy.

Everything runs inside the test lab's network namespaces (lab): clients in the lab host netns,
servers in a lab instance, proxies listening in the lab host and connecting into the instance.
Entry point: ``scripts/bench`` (= ``python -m benchmarks``); see docs/benchmarks.md.
"""
