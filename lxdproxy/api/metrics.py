"""``GET /1.0/metrics``: Prometheus text made by ``prometheus_client``, per device and per process.

Names follow HAProxy's frontend and Envoy's tcp/udp proxy stats: ``lxdproxy_device_`` prefix,
``_total`` on counters, bytes as the unit; *in* is client -> target, *out* target -> client
(docs/operations.md has the table). A scrape reads one snapshot per device (O(devices)) on the
event loop, with no lock a relay could wait for, and formats the text in a thread.

Counters come as plain dicts of numbers from one or more sources (the in-process forwarder
today, worker processes later) and are summed per device. ``CounterTotals`` keeps them from
ever going backwards: when a source's count drops (the source was replaced, or the device
restarted there) or a source disappears, what it had counted is kept as the device's floor.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.process_collector import ProcessCollector

from lxdproxy.forward.counters import COUNTER_FIELDS, GAUGE_FIELDS
from lxdproxy.store import Store
from lxdproxy.warning_registry import WarningRegistry

DeviceKey = tuple[str, str]  # (instance, device)
Snapshot = Mapping[str, float]  # forward.counters field name -> value
SourceSnapshots = Mapping[str, Mapping[DeviceKey, Snapshot]]  # source id -> device -> numbers

LABELS = ("project", "instance", "device", "protocol")

# field -> (metric name without the _total suffix, help); order = exposition order
COUNTERS: dict[str, tuple[str, str]] = {
    "connections_accepted": ("lxdproxy_device_connections",
                             "Connections accepted on the device's listeners"),
    "connect_failures": ("lxdproxy_device_connect_failures",
                         "Connections (or UDP sessions) whose dial to the target failed"),
    "bytes_in": ("lxdproxy_device_bytes_in",
                 "Payload bytes received from clients and passed on to the target"),
    "bytes_out": ("lxdproxy_device_bytes_out",
                  "Payload bytes received from the target and passed on to clients"),
    "datagrams_in": ("lxdproxy_device_datagrams_in",
                     "Datagrams from clients towards the target (udp listen, or one per stream read)"),
    "datagrams_out": ("lxdproxy_device_datagrams_out",
                      "Datagrams from the target for clients"),
    "datagrams_dropped": ("lxdproxy_device_datagrams_dropped",
                          "Datagrams discarded either way (queue full, send failed)"),
}
# NAT devices have no relays: their counters are nft's on their DNAT rules, which a NAT chain
# only sees for the first packet of each flow (conntrack translates the rest).
NAT_COUNTERS: dict[str, tuple[str, str]] = {
    "nat_packets": ("lxdproxy_nat_packets",
                    "Packets that hit the NAT device's DNAT rules (each flow's first packet)"),
    "nat_bytes": ("lxdproxy_nat_bytes",
                  "Bytes of the packets that hit the NAT device's DNAT rules"),
}
TOTAL_FIELDS = (*COUNTER_FIELDS, *NAT_COUNTERS)  # every field CounterTotals keeps monotonic
GAUGES: dict[str, tuple[str, str]] = {
    "connections_active": ("lxdproxy_device_connections_active",
                           "Connections open now (being dialled or relayed)"),
    "udp_sessions_active": ("lxdproxy_device_udp_sessions_active",
                            "UDP client sessions open now"),
}
UP = ("lxdproxy_device_up", "1 if the device is running, 0 if it failed to start")

assert set(COUNTERS) == set(COUNTER_FIELDS) and set(GAUGES) == set(GAUGE_FIELDS)


@dataclass(frozen=True)
class DeviceLabels:
    project: str
    instance: str
    device: str
    protocol: str  # the listen side's: tcp, udp or unix

    @property
    def key(self) -> DeviceKey:
        return (self.instance, self.device)

    def values(self) -> list[str]:
        return [self.project, self.instance, self.device, self.protocol]


class CounterTotals:
    """Sums device counters over sources so that no total ever decreases. Pure; no I/O."""

    def __init__(self) -> None:
        self._last: dict[str, dict[DeviceKey, dict[str, float]]] = {}
        self._floor: dict[DeviceKey, dict[str, float]] = {}

    def update(self, sources: SourceSnapshots) -> dict[DeviceKey, dict[str, float]]:
        """Take one snapshot of every source; returns each present device's totals (counters
        with their floor, gauges summed as they are)."""
        for source in list(self._last):
            if source not in sources:  # a replaced worker: keep what it counted
                for key, values in self._last.pop(source).items():
                    self._retire(key, values)
        totals: dict[DeviceKey, dict[str, float]] = {}
        for source, devices in sources.items():
            last = self._last.setdefault(source, {})
            for key in list(last):
                if key not in devices:
                    self._retire(key, last.pop(key))
            for key, snapshot in devices.items():
                prev = last.get(key)
                counters = {f: float(snapshot.get(f, 0)) for f in TOTAL_FIELDS}
                if prev is not None:
                    # A count below the last one: the device restarted in that source.
                    self._retire(key, {f: prev[f] for f in TOTAL_FIELDS if counters[f] < prev[f]})
                last[key] = counters
                total = totals.setdefault(key, dict.fromkeys((*TOTAL_FIELDS, *GAUGE_FIELDS), 0.0))
                for f in TOTAL_FIELDS:
                    total[f] += counters[f]
                for f in GAUGE_FIELDS:
                    total[f] += float(snapshot.get(f, 0))
        for key, floor in list(self._floor.items()):
            if key not in totals:
                del self._floor[key]  # the device is gone everywhere: so are its series
                continue
            for f, value in floor.items():
                totals[key][f] += value
        return totals

    def _retire(self, key: DeviceKey, values: Mapping[str, float]) -> None:
        floor = self._floor.setdefault(key, {})
        for f, value in values.items():
            floor[f] = floor.get(f, 0.0) + value


@dataclass(frozen=True)
class DeviceReading:
    """One device at one scrape. ``values`` is None for a device that is not running; ``nat``
    says which counters it has (nft's, or the relays')."""

    labels: DeviceLabels
    up: bool
    values: Mapping[str, float] | None
    nat: bool = False


class DeviceCollector:
    """Reads every device once per scrape, from the callables' answers.

    ``running()``: labels of every running device and whether it is NAT (NAT devices have
    nft's counters instead of the relays'); ``counters()``: the sources' snapshots; ``failed()``: labels
    of devices that should run but failed to start (``up`` 0).
    """

    def __init__(self, running: Callable[[], Iterable[tuple[DeviceLabels, bool]]],
                 counters: Callable[[], Awaitable[SourceSnapshots]],
                 failed: Callable[[], Iterable[DeviceLabels]]) -> None:
        self._running = running
        self._counters = counters
        self._failed = failed
        self._totals = CounterTotals()

    async def read(self) -> list[DeviceReading]:
        """On the event loop (the runtime's state is the loop's): plain copies, no formatting.
        The counters come from the data plane (each worker answers with its own)."""
        totals = self._totals.update(await self._counters())
        readings = [DeviceReading(labels, True, totals.get(labels.key, {}), nat)
                    for labels, nat in self._running()]
        seen = {r.labels.key for r in readings}
        readings += [DeviceReading(labels, False, None) for labels in self._failed()
                     if labels.key not in seen]
        return readings


def families(readings: Iterable[DeviceReading]) -> Iterator[Metric]:
    up = GaugeMetricFamily(*UP, labels=LABELS)
    counters = {f: CounterMetricFamily(name, doc, labels=LABELS)
                for f, (name, doc) in COUNTERS.items()}
    gauges = {f: GaugeMetricFamily(name, doc, labels=LABELS)
              for f, (name, doc) in GAUGES.items()}
    nat = {f: CounterMetricFamily(name, doc, labels=LABELS)
           for f, (name, doc) in NAT_COUNTERS.items()}
    for reading in readings:
        values = reading.labels.values()
        up.add_metric(values, 1 if reading.up else 0)
        if reading.values is None:
            continue
        if reading.nat:
            for f, family in nat.items():
                family.add_metric(values, reading.values.get(f, 0.0))
            continue
        for f, family in counters.items():
            family.add_metric(values, reading.values.get(f, 0.0))
        for f, family in gauges.items():
            family.add_metric(values, reading.values.get(f, 0.0))
    yield up
    yield from counters.values()
    yield from gauges.values()
    yield from nat.values()


class _Readings:
    """A prometheus_client collector over one scrape's readings."""

    def __init__(self, readings: list[DeviceReading]) -> None:
        self._readings = readings

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        return families(self._readings)


def render(readings: list[DeviceReading]) -> bytes:
    """The exposition text: devices and this process. A registry of its own per scrape (never
    prometheus_client's global one), so it can run off the event loop."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Readings(readings))
    ProcessCollector(namespace="lxdproxy", registry=registry)
    return generate_latest(registry)


def protocol_of(device_config: Mapping[str, str]) -> str:
    """``tcp``/``udp``/``unix`` from a stored device's ``listen`` (``""`` if unreadable)."""
    conn_type, sep, _rest = device_config.get("listen", "").partition(":")
    return conn_type if sep else ""


METRICS = web.AppKey("metrics", DeviceCollector)


async def get_metrics(request: web.Request) -> web.Response:
    readings = await request.app[METRICS].read()
    # Formatting is ~70 us a device: in a thread, so a big scrape never stalls the relays for
    # its whole length (the GIL still switches every few ms).
    body = await asyncio.get_running_loop().run_in_executor(None, render, readings)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


class RunningDevices(Protocol):
    """What the collector reads from the device runtime (``manager.runtime.DeviceRuntime``)."""

    def running_devices(self) -> Mapping[DeviceKey, Any]: ...

    async def device_counters(self) -> SourceSnapshots: ...


def device_collector(runtime: RunningDevices, warnings: WarningRegistry,
                     store: Store) -> DeviceCollector:
    """The collector over the daemon's runtime (running devices and their counters) and its
    warnings (devices that failed to start: ``up`` 0)."""

    def running() -> Iterator[tuple[DeviceLabels, bool]]:
        for (instance, device), rd in runtime.running_devices().items():
            yield (DeviceLabels(rd.instance.project, instance, device,
                                rd.device.listen.conn_type.value), rd.device.nat)

    def failed() -> Iterator[DeviceLabels]:
        for f in warnings.failed_devices():
            config = store.get_devices(f.instance).get(f.device, {})
            yield DeviceLabels(f.project, f.instance, f.device, protocol_of(config))

    return DeviceCollector(running, runtime.device_counters, failed)
