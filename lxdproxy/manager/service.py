"""The device manager: every instance write as one unit, reconcile, and following instances.

A write is validated once (config/), diffed against what runs, applied (DeviceRuntime), then
persisted (the backend); any failure rolls back what was applied, so a rejected write changes
nothing. At start, reconcile realises every stored device of every running instance; when an
instance changes by itself (its process replaced, its netns gone), its devices follow.

A stored device that cannot start outside a write (reconcile, an instance that came back) is
reported to the problem sink (LXD warnings) and retried every ``retry_interval`` seconds and on
every event of its instance, until it starts (the warning is then resolved) or is removed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Protocol

from lxdproxy.config.model import InstanceType, ProxyDevice
from lxdproxy.errors import ConfigError, DeviceStartError, LxdError, NotFoundError, NotSupportedError
from lxdproxy.instances.backend import InstanceBackend
from lxdproxy.instances.model import Instance, InstanceUpdate
from lxdproxy.manager.runtime import DeviceRuntime, RunningDevice
from lxdproxy.manager.writes import (
    InstancePatch,
    diff_devices,
    from_patch,
    normalised,
    same_namespaces,
    same_target,
    stored_proxies,
    validate_devices,
)
from lxdproxy.periodic import Periodic

log = logging.getLogger(__name__)

# Checks the current record before a write (the API's If-Match); raises to refuse it.
Precondition = Callable[[dict[str, Any]], None]


def start_error(device_name: str, exc: BaseException) -> DeviceStartError:
    reason = exc.message if isinstance(exc, LxdError) else str(exc) or type(exc).__name__
    # LXD 5.0.2's wording, captured in fixtures/rest/put-start-failure-c1-wait.json.
    return DeviceStartError(f'Failed to start device "{device_name}": {reason}')


def _no_precondition(_record: dict[str, Any]) -> None:
    return None


class DeviceProblems(Protocol):
    """Where a device that cannot start is reported (LXD warnings, warning_registry.py)."""

    def raise_device_failure(self, project: str, instance: str, device: str,
                             message: str) -> Any: ...

    def resolve_device(self, project: str, instance: str, device: str) -> Any: ...


class DeviceManager:
    def __init__(self, backend: InstanceBackend, runtime: DeviceRuntime,
                 problems: DeviceProblems, *, retry_interval: float = 5.0) -> None:
        self.backend = backend
        self.runtime = runtime
        self.problems = problems
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._failed: dict[tuple[str, str], str] = {}  # (instance, device) -> why, for retries
        self._retry = Periodic(retry_interval, self._retry_failed)
        backend.watch(self._instance_changed)

    # -- reads --------------------------------------------------------------------------------

    async def record(self, name: str) -> dict[str, Any]:
        return await self.backend.get_record(name)

    async def state(self, name: str) -> dict[str, Any]:
        return await self.backend.get_state(name)

    async def names(self) -> list[str]:
        return await self.backend.list_names()

    async def _forward_listen_addresses(self) -> tuple[str, ...]:
        try:
            return tuple(await self.backend.network_forward_listen_addresses())
        except Exception as exc:
            log.warning("could not read network forwards, skipping that check: %s", exc)
            return ()

    # -- writes -------------------------------------------------------------------------------

    async def put(self, name: str, update: InstanceUpdate,
                  precondition: Precondition = _no_precondition) -> None:
        await self._write(name, lambda _record: normalised(update), precondition)

    async def patch(self, name: str, patch: InstancePatch,
                    precondition: Precondition = _no_precondition) -> None:
        await self._write(name, lambda record: from_patch(record, patch), precondition)

    async def _write(self, name: str, desire: Callable[[dict[str, Any]], InstanceUpdate],
                     precondition: Precondition) -> None:
        async with self._lock:
            record = await self.backend.get_record(name)
            precondition(record)
            update = desire(record)
            before = await self.backend.get_instance(name)
            new = validate_devices(update.devices, before.type,
                                   await self._forward_listen_addresses())
            after = await self.backend.preview(name, update)
            old = stored_proxies(record["devices"], before.type)
            diff = diff_devices(old, new, namespaces_changed=not same_namespaces(before, after),
                                nics_changed=before.nics != after.nics)
            await self._apply(after, diff.stop, diff.start, new,
                              lambda: self.backend.save(name, update))
            untouched = set(new) - set(diff.start) if after.running else set()
            self._forget_failures(name, keep=untouched, project=after.project)

    async def _apply(self, inst: Instance, stop: tuple[str, ...], start: tuple[str, ...],
                     new: dict[str, ProxyDevice], persist: Callable[[], Any]) -> None:
        """Stop ``stop``, start ``start`` (if the instance runs), persist; on any failure put
        back exactly what ran before."""
        replaced: dict[str, RunningDevice] = {}
        touched: list[str] = []
        try:
            for dev in (*stop, *start):
                rd = self.runtime.running(inst.name).get(dev)
                if rd is not None:
                    replaced[dev] = rd
            for dev in stop:
                await self.runtime.stop(inst.name, dev)
            if inst.running:
                for dev in start:
                    touched.append(dev)
                    try:
                        await self.runtime.start(inst, dev, new[dev])
                    except Exception as exc:
                        raise start_error(dev, exc) from None
            else:
                for dev in start:
                    await self.runtime.stop(inst.name, dev)
            await persist()
        except BaseException:
            for dev in reversed(touched):
                if dev not in replaced:  # a replaced one is put back in place below
                    await self.runtime.stop(inst.name, dev)
            for dev, rd in sorted(replaced.items()):
                try:
                    await self.runtime.start(rd.instance, dev, rd.device)
                except Exception:
                    log.exception("rollback: restarting device %s/%s failed", inst.name, dev)
            raise

    async def create(self, body: dict[str, Any]) -> str:
        """``body`` is an InstancesPost whose ``config`` and ``devices`` are string maps."""
        async with self._lock:
            try:
                itype = InstanceType(body.get("type") or "container")
            except ValueError:
                raise ConfigError(f'Invalid instance type "{body.get("type")}"') from None
            update = normalised(InstanceUpdate(config=body["config"], devices=body["devices"]))
            body = {**body, "config": update.config, "devices": update.devices}
            new = validate_devices(update.devices, itype, await self._forward_listen_addresses())
            await self.backend.create(body)
            name = str(body["name"])
            inst = await self.backend.get_instance(name)

            async def keep() -> None:
                return None

            try:
                await self._apply(inst, (), tuple(sorted(new)), new, keep)
            except BaseException:
                await self.backend.delete(name)
                raise
            return name

    async def delete(self, name: str) -> None:
        async with self._lock:
            await self.backend.get_record(name)
            await self.backend.delete(name)
            await self.runtime.stop_instance(name)
            self._forget_failures(name)

    async def change_state(self, name: str, action: str) -> None:
        """``PUT /state``: stop/start/restart switch the devices off/on (local: the process is
        never signalled). Start failures roll back: the instance stays stopped."""
        async with self._lock:
            rec = await self.backend.get_record(name)
            if action in ("freeze", "unfreeze"):
                raise NotSupportedError("Freezing instances is not supported by lxdproxy")
            if action not in ("start", "stop", "restart"):
                raise LxdError(f"Unknown action {action}", 400)
            running = rec["status"] == "Running"
            if action == "stop" and not running:
                raise LxdError("The instance is already stopped", 400)
            if action == "start" and running:
                raise LxdError("The instance is already running", 400)
            if action == "restart":
                # Fails (changing nothing) when the process is gone, so the user's next step,
                # pointing user.lxdproxy.pid at the new process, brings the devices back.
                await self.backend.set_stopped(name, False)
            if action in ("stop", "restart"):
                await self.runtime.stop_instance(name)
                await self.backend.set_stopped(name, True)
                self._forget_failures(name, project=rec.get("project", "default"))
            if action == "stop":
                return
            await self.backend.set_stopped(name, False)
            inst = await self.backend.get_instance(name)
            stored = stored_proxies(await self.backend.stored_devices(name), inst.type)
            started: list[str] = []
            try:
                for dev, parsed in sorted(stored.items()):
                    if parsed is None:
                        raise DeviceStartError(f'Failed to start device "{dev}": stored '
                                               "config no longer validates")
                    try:
                        await self.runtime.start(inst, dev, parsed)
                    except Exception as exc:
                        raise start_error(dev, exc) from None
                    started.append(dev)
            except BaseException:
                for dev in reversed(started):
                    await self.runtime.stop(name, dev)
                await self.backend.set_stopped(name, True)
                raise

    # -- following the instances ----------------------------------------------------------------

    async def reconcile(self) -> bool:
        """Realise every stored proxy device of every running instance. Device failures are
        logged; False when the instance list itself could not be read (LXD unreachable)."""
        async with self._lock:
            try:
                names = await self.backend.managed_names()
            except Exception as exc:
                log.error("reconcile: cannot list instances: %s", exc)
                return False
            for name in sorted(names):
                try:
                    await self._realise(name)
                except Exception as exc:
                    log.error("reconcile: instance %s: %s", name, exc)
            await self.runtime.stop_unclaimed()
            return True

    async def reconcile_until_done(self, retry_s: float = 5.0) -> None:
        while not await self.reconcile():
            await asyncio.sleep(retry_s)

    async def _realise(self, name: str) -> None:
        try:
            inst = await self.backend.get_instance(name)
        except NotFoundError:
            await self.runtime.stop_instance(name)
            self._forget_failures(name)
            return
        stored = stored_proxies(await self.backend.stored_devices(name), inst.type)
        running = self.runtime.running(name)
        for dev in sorted(set(running) - (set(stored) if inst.running else set())):
            await self.runtime.stop(name, dev)
        self._forget_failures(name, keep=set(stored) if inst.running else set(),
                              project=inst.project)
        if not inst.running:
            return
        for dev, parsed in sorted(stored.items()):
            if parsed is None:
                self._failed_device(inst, dev, f'Failed to start device "{dev}": stored config '
                                               "no longer validates")
                continue
            rd = running.get(dev)
            if rd is not None and rd.device == parsed and same_target(rd.instance, inst):
                continue
            try:
                await self.runtime.start(inst, dev, parsed)
            except Exception as exc:
                self._failed_device(inst, dev, start_error(dev, exc).message)
            else:
                self._device_up(inst, dev)

    def _failed_device(self, inst: Instance, dev: str, message: str) -> None:
        if self._failed.get((inst.name, dev)) != message:
            log.error("%s (instance %s)", message, inst.name)
        self._failed[(inst.name, dev)] = message
        self.problems.raise_device_failure(inst.project, inst.name, dev, message)

    def _device_up(self, inst: Instance, dev: str) -> None:
        if self._failed.pop((inst.name, dev), None) is not None:
            log.info("device %s/%s is up again", inst.name, dev)
        # Always: a warning may be left from before a restart of the daemon.
        self.problems.resolve_device(inst.project, inst.name, dev)

    def _forget_failures(self, name: str, keep: set[str] | None = None,
                         project: str = "default") -> None:
        """Failures of devices that are gone (or of an instance that stopped) are resolved."""
        for inst_name, dev in [k for k in self._failed if k[0] == name]:
            if keep is None or dev not in keep:
                del self._failed[(inst_name, dev)]
                self.problems.resolve_device(project, inst_name, dev)

    def start_retrying(self) -> None:
        self._retry.start()

    async def _retry_failed(self) -> None:
        for name in sorted({inst for inst, _dev in self._failed}):
            async with self._lock:
                try:
                    await self._realise(name)
                except Exception as exc:
                    log.error("retrying the devices of %s: %s", name, exc)

    async def _instance_changed(self, name: str) -> None:
        # The backend reports from its own tasks; never make it wait for a write in progress.
        async def follow() -> None:
            async with self._lock:
                await self._realise(name)

        task = asyncio.get_running_loop().create_task(follow())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        await self._retry.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
