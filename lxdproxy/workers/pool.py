"""WorkerPool: the control plane's side of the data plane (the Forwarder surface, in workers).

The pool opens each listener once, in the right namespace (``forward.endpoints``), and sends it
to every worker: all workers accept on one shared listening socket (measured against an
SO_REUSEPORT group: docs/architecture.md). A UDP device's sessions are spread over the workers
by client address (``udp_groups``: one socket per worker slot and an eBPF slot selector); where
that cannot be (one worker, no bpf(2), ``--no-udp-spread``, listeners made with dropped ids)
one owner worker per device (by slot) reads the one socket and the others hold it so it
outlives the owner. Either way a client's datagrams, hence its session, stay in one worker.
The pool keeps no listening socket itself:
whenever it needs one again (a new worker, a reload, an update that keeps the listener) it
asks a worker for it, and opens it anew only when no worker has it any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import logging
import os
import socket
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from lxdproxy.config import validate_proxy_device
from lxdproxy.config.keys import EXT_BIND_GID, EXT_BIND_UID
from lxdproxy.config.model import InstanceType, ProxyDevice
from lxdproxy.errors import DeviceStartError
from lxdproxy.forward.endpoints import Endpoints, remove_socket_file
from lxdproxy.forward.forwarder import START_ERROR_PREFIX
from lxdproxy.forward.limits import CONNECT_TIMEOUT, UDP_IDLE_TIMEOUT
from lxdproxy.forward.plan import DevicePlan, ListenSpec, PlanError, RelayKind, plan_device
from lxdproxy.forward.stream_relay import RelayMode
from lxdproxy.netns import Namespaces, ns_identity
from lxdproxy.netns.protected_paths import ProtectedPaths
from lxdproxy.workers.link import REQUEST_TIMEOUT, WorkerError, WorkerGone, WorkerLink
from lxdproxy.workers.protocol import (
    DeviceKey,
    DeviceSpec,
    Drain,
    ListDevices,
    Listeners,
    NsIdentity,
    ProtocolError,
    Shutdown,
    Start,
    Stats,
    Stop,
    spec_from_json,
)
from lxdproxy.workers.udp_groups import (
    DeviceFds,
    fds_for_slot,
    spread_listeners,
    spread_unavailable,
)

log = logging.getLogger("lxdproxy.workers")

EXIT_TIMEOUT = 10.0  # how long shutdown waits for a worker to exit before SIGKILL


class WorkerDevice(NamedTuple):
    """What the workers run for one key (``running()``)."""

    config: dict[str, str]
    listen_ns: Namespaces
    connect_ns: Namespaces
    instance_name: str


@dataclasses.dataclass(frozen=True)
class WorkerPoolStats:
    devices: int
    listeners: int
    open_connections: int
    accepted: int
    failed: int
    workers: int
    draining_workers: int
    worker_deaths: int
    per_worker: tuple[dict[str, int], ...] = ()  # pid, generation, open_connections, ...


class WorkerPool:
    """Forwarding in ``workers`` processes (default one per CPU) that outlive the control plane.

    Call ``await open()`` first: it finds the workers already running on this state directory
    (a restarted control plane) and spawns only the missing ones.
    """

    def __init__(self, state_dir: Path, *, workers: int | None = None,
                 drain_timeout: float | None = None, log_level: str = "INFO",
                 connect_timeout: float = CONNECT_TIMEOUT,
                 udp_idle_timeout: float = UDP_IDLE_TIMEOUT,
                 protected_paths: ProtectedPaths | None = None,
                 request_timeout: float = REQUEST_TIMEOUT, udp_spread: bool = True,
                 relay: RelayMode = RelayMode.COPY) -> None:
        self.directory = Path(state_dir) / "workers"
        self.size = workers if workers is not None else (os.cpu_count() or 1)
        if self.size < 1:
            raise ValueError("a worker pool needs at least one worker")
        self.drain_timeout = drain_timeout
        self.request_timeout = request_timeout  # a worker silent this long is killed and replaced
        self.protected_paths = protected_paths  # the daemon's own: no device may listen there
        self.worker_options = ("--log-level", log_level, "--connect-timeout", str(connect_timeout),
                               "--udp-idle-timeout", str(udp_idle_timeout), "--relay", relay.value)
        self.generation = 0
        self.worker_deaths = 0
        self._active: dict[int, WorkerLink] = {}  # slot -> worker of the current generation
        self._draining: set[WorkerLink] = set()
        self._specs: dict[DeviceKey, DeviceSpec] = {}
        self.udp_spread = udp_spread  # wanted; open() decides whether this machine can
        self._spread_ok = False
        self._spread: set[DeviceKey] = set()  # UDP devices whose workers each read their own
        self._lock = asyncio.Lock()
        self._closing = False
        self._tasks: set[asyncio.Task[None]] = set()

    # -- discovery ------------------------------------------------------------------------------
    async def open(self) -> None:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._spread_ok = self._check_spread()
        async with self._lock:
            found = await self._find_workers()
            newest = max((w.generation for w in found if not w.draining), default=0)
            self.generation = max([newest, *(w.generation for w in found)], default=0) or 1
            for link in found:
                if link.draining or link.generation != newest or link.index in self._active:
                    self._keep_draining(link)
                else:
                    self._adopt(link)
            for link in self._active.values():
                for item in await link.call(ListDevices()):  # type: ignore[union-attr]
                    spec = spec_from_json(item["spec"])
                    self._specs.setdefault(spec.key, spec)
                    if item.get("udp_maps"):
                        self._spread.add(spec.key)
            for slot in range(self.size):
                if slot not in self._active:
                    await self._spawn_slot(slot)
            # A worker that died while no control plane watched left its peers' devices
            # unrun in its replacement: the spawn above fed it; make the survivors agree too.
            for link in list(self._active.values()):
                await self._feed(link, only_missing=True)
        log.info("worker pool: %d workers (generation %d, %d found running), %d devices",
                 len(self._active), self.generation, len(found), len(self._specs))

    async def _find_workers(self) -> list[WorkerLink]:
        found = []
        for path in sorted(self.directory.glob("w*.sock")):
            try:
                link = await WorkerLink.connect(path, pid=os.getpid(), generation=0,
                                                request_timeout=self.request_timeout)
            except (OSError, ProtocolError) as exc:
                if isinstance(exc, ProtocolError):
                    log.error("worker at %s: %s (left running)", path, exc)
                    continue
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()  # nobody listens: a killed worker's leftover
                continue
            found.append(link)
        return found

    def _adopt(self, link: WorkerLink) -> None:
        link.on_lost = self._worker_lost
        self._active[link.index] = link

    def _keep_draining(self, link: WorkerLink) -> None:
        link.on_lost = self._draining.discard
        self._draining.add(link)

    async def _spawn_slot(self, slot: int) -> WorkerLink:
        link = await WorkerLink.spawn(self.directory, generation=self.generation, index=slot,
                                      options=self.worker_options,
                                      request_timeout=self.request_timeout)
        await self._feed(link, only_missing=False)
        self._adopt(link)
        return link

    async def _feed(self, link: WorkerLink, *, only_missing: bool) -> None:
        """Give ``link`` every device the pool runs (listeners from another worker)."""
        have: set[DeviceKey] = set()
        if only_missing:
            have = {spec_from_json(item["spec"]).key
                    for item in await link.call(ListDevices())}  # type: ignore[union-attr]
        for key, spec in list(self._specs.items()):
            if key in have:
                continue
            try:
                fds = await self._fds_for_worker(key, link)
            except DeviceStartError as exc:
                log.error("proxy %s/%s: cannot re-open its listeners: %s", *key, exc.message)
                continue
            try:
                await self._start_on(link, spec, fds)
            except WorkerError as exc:
                log.error("proxy %s/%s: %r could not start it: %s", *key, link, exc.message)
            finally:
                fds.close()

    # -- the Forwarder surface ----------------------------------------------------------------
    async def start(self, key: DeviceKey, device: ProxyDevice, *, listen_ns: Namespaces,
                    connect_ns: Namespaces, instance_name: str) -> None:
        """Start ``key``, or update it in place. The same spec again is a no-op. A change that
        keeps the listeners keeps them (and every established connection); new listeners open
        before old ones close. Raises DeviceStartError with LXD's text and changes nothing."""
        spec = _spec(key, device, listen_ns, connect_ns, instance_name)
        async with self._lock:
            old = self._specs.get(key)
            if old is not None and old.same_device(spec):
                return
            try:
                plan = plan_device(device)
            except PlanError as exc:
                raise DeviceStartError(START_ERROR_PREFIX + str(exc)) from None
            keep = self._reusable(old, spec, device, plan) if old is not None else {}
            try:
                fds, spec = await self._listeners_for(key, spec, device, plan, keep)
            except DeviceStartError as exc:
                if old is None or not _port_clash(exc, old, plan):
                    raise
                # The new listener wants a port the old one holds (another address, same
                # port): it cannot open first. Close the old, then start as new.
                await self._stop_locked(key)
                try:
                    fds, spec = await self._listeners_for(key, spec, device, plan, {})
                except DeviceStartError:
                    await self._restore(old)
                    raise
                old = None
            spread = bool(fds.slots)
            try:
                await self._start_everywhere(spec, fds, old)
            finally:
                fds.close()
            if old is not None and old.host_socket and old.host_socket != spec.host_socket:
                await _remove_host_socket(old)
            self._specs[key] = spec
            if spread:
                self._spread.add(key)
            else:
                self._spread.discard(key)

    async def stop(self, key: DeviceKey) -> None:
        """Every worker closes the device's listeners and connections now (unknown: no-op)."""
        async with self._lock:
            await self._stop_locked(key)

    async def stop_all(self) -> None:
        async with self._lock:
            for key in list(self._specs):
                await self._stop_locked(key)

    def running(self) -> dict[DeviceKey, WorkerDevice]:
        return {key: WorkerDevice(dict(spec.config), spec.listen_ns or Namespaces.current(),
                                  spec.connect_ns or Namespaces.current(), spec.instance_name)
                for key, spec in self._specs.items()}

    def active(self, key: DeviceKey) -> bool:
        return key in self._specs

    def keys(self) -> list[DeviceKey]:
        return list(self._specs)

    def pids(self) -> list[int]:
        """Every worker process this pool knows (active and draining)."""
        return [w.pid for w in [*self._active.values(), *self._draining]]

    async def stats(self) -> WorkerPoolStats:
        totals = {"devices": 0, "listeners": 0, "open_connections": 0, "accepted": 0,
                  "failed": 0}
        links = [*self._active.values(), *self._draining]
        results = await asyncio.gather(*(w.call(Stats()) for w in links),
                                       return_exceptions=True)
        per_worker = []
        for link, result in zip(links, results, strict=True):
            if isinstance(result, dict):
                for name in ("open_connections", "accepted", "failed"):
                    totals[name] += int(result.get(name, 0))
                per_worker.append({**{k: int(v) for k, v in result.items()
                                       if k != "device_counters"}, "index": link.index})
        listeners = 0
        for spec in self._specs.values():
            with contextlib.suppress(PlanError, ValueError):
                listeners += len(_plan_of(spec).listeners)
        return WorkerPoolStats(devices=len(self._specs), listeners=listeners,
                               open_connections=totals["open_connections"],
                               accepted=totals["accepted"], failed=totals["failed"],
                               workers=len(self._active), draining_workers=len(self._draining),
                               worker_deaths=self.worker_deaths, per_worker=tuple(per_worker))

    async def source_counters(self) -> dict[str, dict[DeviceKey, dict[str, int]]]:
        """Each worker's device counters (source ``worker-<pid>``: a replaced worker is a new
        source, and the metrics keep what the old one had counted)."""
        links = [*self._active.values(), *self._draining]
        results = await asyncio.gather(*(w.call(Stats()) for w in links),
                                       return_exceptions=True)
        out: dict[str, dict[DeviceKey, dict[str, int]]] = {}
        for link, result in zip(links, results, strict=True):
            if isinstance(result, dict):
                out[f"worker-{link.pid}"] = {
                    (inst, dev): {k: int(v) for k, v in snapshot.items()}
                    for inst, dev, snapshot in result.get("device_counters", [])}
        return out

    # -- whole-pool operations ------------------------------------------------------------------
    async def reload(self) -> None:
        """New workers (the code now on disk) take over every listener; the old ones stop
        accepting and drain (``drain_timeout``), then exit."""
        async with self._lock:
            old = list(self._active.values())
            self.generation += 1
            fresh: dict[int, WorkerLink] = {}
            try:
                for slot in range(self.size):
                    link = await WorkerLink.spawn(self.directory, generation=self.generation,
                                                  index=slot, options=self.worker_options,
                                                  request_timeout=self.request_timeout)
                    fresh[slot] = link
                    await self._feed(link, only_missing=False)
            except BaseException:
                for link in fresh.values():
                    with contextlib.suppress(WorkerGone, WorkerError):
                        await link.call(Shutdown())
                self.generation -= 1
                raise
            self._active = {}
            for link in fresh.values():
                self._adopt(link)
            for link in old:
                self._keep_draining(link)
                with contextlib.suppress(WorkerGone, WorkerError):
                    await link.call(Drain(self.drain_timeout))
        log.info("reload: generation %d took over %d devices; %d old workers draining",
                 self.generation, len(self._specs), len(old))

    def detach(self) -> None:
        """The control plane goes away; workers, listeners and connections stay."""
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        for link in [*self._active.values(), *self._draining]:
            link.detach()
        self._active, self._draining = {}, set()

    async def shutdown(self) -> None:
        """Stop every device and every worker; remove unix socket files. Nothing is left."""
        async with self._lock:
            self._closing = True
            for task in list(self._tasks):
                task.cancel()
            links = [*self._active.values(), *self._draining]
            await asyncio.gather(*(_shutdown_link(w) for w in links), return_exceptions=True)
            for spec in self._specs.values():
                await _remove_host_socket(spec)
            self._specs.clear()
            self._active, self._draining = {}, set()

    # -- internals ------------------------------------------------------------------------------
    def _reusable(self, old: DeviceSpec, new: DeviceSpec, device: ProxyDevice,
                  plan: DevicePlan) -> dict[int, int]:
        """new listener position -> old listener position, for listeners both configs share."""
        if old.identity[0] != new.identity[0]:
            return {}
        old_cfg, new_cfg = dict(old.config), dict(new.config)
        listen_keys = ("bind", "uid", "gid", "mode", EXT_BIND_UID, EXT_BIND_GID)
        if any(old_cfg.get(k) != new_cfg.get(k) for k in listen_keys):
            return {}
        try:
            old_plan = _plan_of(old)
        except (PlanError, ValueError):
            return {}
        by_spec = {_listen_key(spec): i for i, spec in enumerate(old_plan.listeners)
                   if _still_bound(spec, old)}
        return {i: by_spec[_listen_key(s)] for i, s in enumerate(plan.listeners)
                if _listen_key(s) in by_spec}

    async def _listeners_for(self, key: DeviceKey, spec: DeviceSpec, device: ProxyDevice,
                             plan: DevicePlan, keep: dict[int, int]
                             ) -> tuple[DeviceFds, DeviceSpec]:
        """One fd per planned listener and worker: kept ones from the workers, the rest opened
        now (a spread UDP device: new reuseport groups)."""
        if (key in self._spread) if keep else self._can_spread(device, plan):
            try:
                return await self._spread_listeners(key, spec, plan, keep), spec
            except OSError as exc:  # bpf(2) (a PlanError is a bind: LXD's error)
                if keep:
                    raise DeviceStartError(f"{START_ERROR_PREFIX}{exc}") from None
                log.warning("proxy %s/%s: cannot spread its UDP sessions over the workers "
                            "(%s): one worker reads them", *key, exc.strerror or exc)
        fds, spec = await self._shared_listeners(key, spec, device, plan, keep)
        return DeviceFds(shared=fds), spec

    async def _shared_listeners(self, key: DeviceKey, spec: DeviceSpec, device: ProxyDevice,
                                plan: DevicePlan, keep: dict[int, int]
                                ) -> tuple[list[int], DeviceSpec]:
        """One fd per planned listener, for every worker: kept ones from a worker."""
        kept: list[int] = []
        if keep:
            kept = await self._listener_fds(key)
        fresh_specs = tuple(s for i, s in enumerate(plan.listeners) if i not in keep)
        opened: list[int] = []
        host_socket = None
        if fresh_specs:
            endpoints = Endpoints(device, dataclasses.replace(plan, listeners=fresh_specs),
                                  listen_ns=spec.listen_ns or Namespaces.current(),
                                  connect_ns=spec.connect_ns or Namespaces.current(),
                                  connect_timeout=0, protected=self.protected_paths)
            try:
                socks = await endpoints.open_listeners()
            except PlanError as exc:
                _close_fds(kept)
                raise DeviceStartError(START_ERROR_PREFIX + str(exc)) from None
            host_socket = endpoints.take_host_socket()
            opened = [s.detach() for s in socks]
        elif keep:
            host_socket = self._specs[key].host_socket
        fds, fresh = [], iter(opened)
        for i in range(len(plan.listeners)):
            fds.append(kept[keep[i]] if i in keep else next(fresh))
        _close_fds([fd for j, fd in enumerate(kept) if j not in keep.values()])
        return fds, dataclasses.replace(spec, host_socket=host_socket)

    async def _listener_fds(self, key: DeviceKey, exclude: WorkerLink | None = None) -> list[int]:
        """The device's listening sockets, from any worker that has them, or opened anew."""
        for link in list(self._active.values()):
            if link is exclude:
                continue
            try:
                reply, fds = await link.request(Listeners(key))
            except WorkerGone:
                continue
            if reply.ok:
                return fds
            _close_fds(fds)
        spec = self._specs[key]
        device = _device_of(spec)
        plan = plan_device(device)
        fds, reopened = await self._shared_listeners(key, spec, device, plan, {})
        self._specs[key] = reopened
        return fds

    # -- UDP sessions spread over the workers (udp_groups) -------------------------------------
    def _check_spread(self) -> bool:
        """Whether UDP devices get one socket per worker; says once, at info, why not."""
        why = spread_unavailable(wanted=self.udp_spread, workers=self.size)
        if why is None:
            return True
        log.info("UDP sessions are not spread over the workers (%s): one worker per device "
                 "reads its datagrams", why)
        return False

    def _can_spread(self, device: ProxyDevice, plan: DevicePlan) -> bool:
        # Sockets of one reuseport group must share their owner: listeners made by a helper
        # dropped to the bind ids stay one shared socket.
        return self._spread_ok and plan.relay is RelayKind.DATAGRAM and not device.drops_bind_ids

    async def _spread_listeners(self, key: DeviceKey, spec: DeviceSpec, plan: DevicePlan,
                                keep: dict[int, int]) -> DeviceFds:
        try:
            return await spread_listeners(list(self._active.values()), key,
                                          spec.listen_ns or Namespaces.current(), plan.listeners,
                                          keep, self.size)
        except PlanError as exc:
            raise DeviceStartError(START_ERROR_PREFIX + str(exc)) from None

    async def _fds_for_worker(self, key: DeviceKey, link: WorkerLink) -> DeviceFds:
        """What ``link`` (a new or replacement worker) needs to run ``key``."""
        if key not in self._spread:
            return DeviceFds(shared=await self._listener_fds(key, exclude=link))
        spec = self._specs[key]
        others = [w for w in self._active.values() if w is not link]
        try:
            return await fds_for_slot(others, link.index, key,
                                      spec.listen_ns or Namespaces.current(),
                                      _plan_of(spec).listeners, self.size)
        except PlanError as exc:
            raise DeviceStartError(START_ERROR_PREFIX + str(exc)) from None
        except OSError as exc:
            raise DeviceStartError(f"{START_ERROR_PREFIX}{exc}") from None

    async def _start_on(self, link: WorkerLink, spec: DeviceSpec, fds: DeviceFds) -> None:
        listeners, maps = fds.of(link.index)
        start = Start(spec, udp_owner=bool(maps) or self._owner(spec, link), udp_maps=len(maps))
        reply, extra = await link.request(start, [*listeners, *maps])
        _close_fds(extra)
        if not reply.ok:
            raise WorkerError(reply.error or "worker error", start_error=reply.start_error)

    def _owner(self, spec: DeviceSpec, link: WorkerLink) -> bool:
        """One slot reads a device's UDP listeners (the same slot after a reload or a
        replacement, so the choice is stable)."""
        return zlib.crc32("\0".join(spec.key).encode()) % self.size == link.index % self.size

    async def _start_everywhere(self, spec: DeviceSpec, fds: DeviceFds,
                                old: DeviceSpec | None) -> None:
        links = [w for w in self._active.values() if not fds.slots or w.index in fds.slots]
        results = await asyncio.gather(*(self._start_on(w, spec, fds) for w in links),
                                       return_exceptions=True)
        failures = [(w, r) for w, r in zip(links, results, strict=True)
                    if isinstance(r, BaseException) and not isinstance(r, WorkerGone)]
        if not failures:
            return
        # Some worker refused: put every worker back as it was, then report the first reason.
        started = [w for w, r in zip(links, results, strict=True) if r is None]
        if old is None:
            await asyncio.gather(*(w.call(Stop(spec.key)) for w in started),
                                 return_exceptions=True)
        elif not started:
            pass  # every worker refused: each still runs the old configuration
        elif fds.slots or old.key in self._spread:
            # Each worker had its own sockets: the started ones closed theirs. Start the old
            # configuration afresh everywhere.
            await asyncio.gather(*(w.call(Stop(spec.key)) for w in self._active.values()),
                                 return_exceptions=True)
            self._spread.discard(old.key)
            await self._restore(old)
        else:
            refused = [w for w, _r in failures]
            old_fds = await self._fds_from(refused, spec.key)
            for link in started:
                with contextlib.suppress(WorkerGone, WorkerError):
                    await self._start_on(link, old, DeviceFds(shared=old_fds))
            _close_fds(old_fds)
        if spec.host_socket and (old is None or old.host_socket != spec.host_socket):
            await _remove_host_socket(spec)
        error = failures[0][1]
        if isinstance(error, WorkerError):
            raise DeviceStartError(error.message) if error.start_error else DeviceStartError(
                f"{START_ERROR_PREFIX}{error.message}")
        raise error

    async def _fds_from(self, links: Iterable[WorkerLink], key: DeviceKey) -> list[int]:
        for link in links:
            with contextlib.suppress(WorkerGone):
                reply, fds = await link.request(Listeners(key))
                if reply.ok:
                    return fds
                _close_fds(fds)
        return []

    async def _stop_locked(self, key: DeviceKey) -> None:
        spec = self._specs.pop(key, None)
        self._spread.discard(key)
        if spec is None:
            return
        links = [*self._active.values(), *self._draining]
        await asyncio.gather(*(w.call(Stop(key)) for w in links), return_exceptions=True)
        await _remove_host_socket(spec)

    async def _restore(self, old: DeviceSpec) -> None:
        try:
            device = _device_of(old)
            plan = plan_device(device)
            fds, spec = await self._listeners_for(old.key, old, device, plan, {})
        except (DeviceStartError, PlanError, ValueError) as exc:
            log.error("proxy %s/%s: could not restore the previous config: %s", *old.key, exc)
            return
        spread = bool(fds.slots)
        try:
            await self._start_everywhere(spec, fds, None)
            self._specs[old.key] = spec
            if spread:
                self._spread.add(old.key)
        except DeviceStartError as exc:
            log.error("proxy %s/%s: could not restore the previous config: %s", *old.key, exc)
        finally:
            fds.close()

    def _worker_lost(self, link: WorkerLink) -> None:
        if self._closing or self._active.get(link.index) is not link:
            return
        del self._active[link.index]
        self.worker_deaths += 1
        log.warning("%r died; its connections are lost; starting a replacement", link)
        task = asyncio.get_running_loop().create_task(self._replace(link.index))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, slot: int) -> None:
        async with self._lock:
            if self._closing or slot in self._active:
                return
            try:
                await self._spawn_slot(slot)
            except OSError as exc:
                log.error("could not replace worker %d: %s", slot, exc)


# -- helpers ------------------------------------------------------------------------------------

def _identity(ns: Namespaces) -> NsIdentity:
    return (ns_identity(ns.net), ns_identity(ns.mnt) if ns.mnt else None,
            ns_identity(ns.user) if ns.user else None)


def _wire_ns(ns: Namespaces) -> Namespaces | None:
    """Our own netns (and no other namespace) goes as null: "the worker's own"."""
    if ns.mnt is None and ns.user is None and ns.is_current_net():
        return None
    return ns


def _spec(key: DeviceKey, device: ProxyDevice, listen_ns: Namespaces, connect_ns: Namespaces,
          instance_name: str) -> DeviceSpec:
    try:
        identity = (_identity(listen_ns), _identity(connect_ns))
    except OSError as exc:
        raise DeviceStartError(f"Instance namespaces are not reachable: {exc}") from None
    return DeviceSpec(key=key, config=device.raw(), listen_ns=_wire_ns(listen_ns),
                      connect_ns=_wire_ns(connect_ns), instance_name=instance_name,
                      identity=identity)


def _device_of(spec: DeviceSpec) -> ProxyDevice:
    return validate_proxy_device(spec.config, InstanceType(spec.instance_type))


def _plan_of(spec: DeviceSpec) -> DevicePlan:
    return plan_device(_device_of(spec))


def _listen_key(spec: ListenSpec) -> ListenSpec:
    # What the socket is: where it listens. Which connect port it maps to is the relay's
    # business, so a changed port map keeps the listener.
    return dataclasses.replace(spec, connect_port=None)


def _still_bound(spec: ListenSpec, old: DeviceSpec) -> bool:
    """A unix path listener is worth keeping only while its socket file is still the one we
    bound: someone who removed the file gets it back on the next change (as LXD's forkproxy
    restart re-creates it). One in another mount namespace is not looked at from here."""
    if spec.family != socket.AF_UNIX or spec.abstract:
        return True
    if old.host_socket is None or old.host_socket[1] is None or (
            old.listen_ns is not None and old.listen_ns.mnt is not None):
        return False
    try:
        st = os.lstat(old.host_socket[0])
    except OSError:
        return False
    return (st.st_dev, st.st_ino) == old.host_socket[1]


def _port_clash(exc: DeviceStartError, old: DeviceSpec, plan: DevicePlan) -> bool:
    """The new listeners failed on a port the old device itself listens on."""
    if os.strerror(errno.EADDRINUSE).lower() not in exc.message.lower():
        return False
    try:
        old_ports = {(s.conn_type, s.port) for s in _plan_of(old).listeners if s.port is not None}
    except (PlanError, ValueError):
        return False
    return any((s.conn_type, s.port) in old_ports for s in plan.listeners)


async def _remove_host_socket(spec: DeviceSpec) -> None:
    if spec.host_socket is None:
        return
    path, identity = spec.host_socket
    listen_ns = spec.listen_ns or Namespaces.current()
    await remove_socket_file(path, identity, listen_ns)


async def _shutdown_link(link: WorkerLink) -> None:
    with contextlib.suppress(WorkerGone, WorkerError):
        await link.call(Shutdown())
    if not await link.wait_exit(EXIT_TIMEOUT):
        log.error("%r did not exit after shutdown: killing it", link)
        link.kill()
        await link.wait_exit(EXIT_TIMEOUT)
    link.detach()
    with contextlib.suppress(FileNotFoundError):
        link.path.unlink()
    link.reap()


def _close_fds(fds: Iterable[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


__all__ = ["WorkerDevice", "WorkerPool", "WorkerPoolStats"]
