"""Instance writes as one unit: validate everything, apply the device diff, persist; roll back
on any failure so a rejected write changes nothing. Also reconcile-at-start and following
instance restarts (new PID -> devices re-created in the new namespaces).

Devices the shim owns live in the store: every local device for the local backend (its
records are read from the same store), the proxy devices for the LXD backend (merged into what
the real LXD reports).
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import logging
from typing import Any

from lxdproxy.api.envelopes import check_if_match, etag_of
from lxdproxy.config.model import InstanceType, ProxyDevice
from lxdproxy.errors import (
    ConfigError,
    DeviceStartError,
    LxdError,
    NotFoundError,
    NotSupportedError,
)
from lxdproxy.instances.backend import InstanceBackend
from lxdproxy.instances.local import nics_from_devices
from lxdproxy.instances.model import Instance
from lxdproxy.manager.runtime import DeviceRuntime, RunningDevice
from lxdproxy.manager.writes import (
    Desired,
    from_patch,
    from_put,
    nics_of,
    plan_changes,
    validate_devices,
)
from lxdproxy.store import Store

log = logging.getLogger("lxdproxy.service")


def _start_error(device_name: str, exc: BaseException) -> DeviceStartError:
    reason = exc.message if isinstance(exc, LxdError) else str(exc) or type(exc).__name__
    # LXD 5.0.2's wording, captured in fixtures/rest/put-start-failure-c1-wait.json.
    return DeviceStartError(f'Failed to start device "{device_name}": {reason}')


def _proxies(devices: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    return {k: v for k, v in devices.items() if v.get("type") == "proxy"}


class InstanceService:
    def __init__(self, backend: InstanceBackend, store: Store, runtime: DeviceRuntime) -> None:
        self.backend = backend
        self.store = store
        self.runtime = runtime
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        backend.watch(self._instance_changed)

    @property
    def owns_all_devices(self) -> bool:
        return self.backend.kind == "local"

    # -- reads --------------------------------------------------------------------------------

    async def record(self, name: str) -> dict[str, Any]:
        rec = copy.deepcopy(await self.backend.get_record(name))
        if not self.owns_all_devices:
            shim = _proxies(self.store.get_devices(name))
            rec["devices"] = {**rec.get("devices", {}), **shim}
            rec["expanded_devices"] = {**rec.get("expanded_devices", {}), **copy.deepcopy(shim)}
        return rec

    async def names(self) -> list[str]:
        return await self.backend.list_names()

    async def _forward_listen_addresses(self) -> tuple[str, ...]:
        """Listen addresses of network forwards (LXD backend): a proxy may not reuse them."""
        fn = getattr(self.backend, "network_forward_listen_addresses", None)
        if not callable(fn):
            return ()
        try:
            return tuple(await fn())
        except Exception as exc:
            log.warning("could not read network forwards, skipping that check: %s", exc)
            return ()

    def _validate(self, devices: dict[str, dict[str, str]], itype: InstanceType,
                  forwards: tuple[str, ...] = ()) -> dict[str, ProxyDevice]:
        return validate_devices(devices, itype, forwards)

    def _stored_proxies(self, devices: dict[str, dict[str, str]],
                        itype: InstanceType) -> dict[str, ProxyDevice | None]:
        """Parsed stored proxies; one that no longer validates maps to None (= changed)."""
        out: dict[str, ProxyDevice | None] = {}
        for name, dev in _proxies(devices).items():
            try:
                out[name] = self._validate({name: dev}, itype)[name]
            except LxdError:
                out[name] = None
        return out

    # -- writes -------------------------------------------------------------------------------

    async def put(self, name: str, body: dict[str, Any], if_match: str | None) -> None:
        await self._write(name, lambda _rec: from_put(body), if_match)

    async def patch(self, name: str, body: dict[str, Any], if_match: str | None) -> None:
        await self._write(name, lambda rec: from_patch(rec, body), if_match)

    async def _write(self, name: str, desire: Any, if_match: str | None) -> None:
        async with self._lock:
            record = await self.record(name)
            check_if_match(if_match, etag_of(record))
            desired: Desired = desire(record)
            inst = await self.backend.get_instance(name)
            new = self._validate(desired.devices, inst.type,
                                 await self._forward_listen_addresses())
            check = getattr(self.backend, "check_update", None)
            if callable(check):
                check(name, {"config": desired.config, "devices": desired.devices})
            nics_changed = nics_of(record["devices"]) != nics_of(desired.devices)
            if nics_changed and self.owns_all_devices:
                inst = dataclasses.replace(
                    inst, nics=nics_from_devices(desired.devices, desired.config))
            old = self._stored_proxies(record["devices"], inst.type)
            plan = plan_changes(old, new, nics_changed=nics_changed)  # type: ignore[arg-type]
            await self._apply(inst, plan.stop, plan.start, new,
                              lambda: self._persist(name, desired))

    async def _apply(self, inst: Instance, stop: tuple[str, ...], start: tuple[str, ...],
                     new: dict[str, ProxyDevice], persist: Any) -> None:
        stopped: list[tuple[str, RunningDevice]] = []
        started: list[str] = []
        updated: dict[str, RunningDevice] = {}  # changed in place: rollback restores the old
        try:
            for dev in stop:
                rd = self.runtime.running(inst.name).get(dev)
                if rd is not None:
                    if (inst.running and dev in start
                            and self.runtime.updates_in_place((inst.name, dev), new[dev])):
                        updated[dev] = rd
                        continue
                    await self.runtime.stop(inst.name, dev)
                    stopped.append((dev, rd))
            if inst.running:
                for dev in start:
                    try:
                        await self.runtime.start(inst, dev, new[dev])
                    except Exception as exc:
                        raise _start_error(dev, exc) from None
                    started.append(dev)
            await persist()
        except BaseException:
            for dev in reversed(started):
                if dev not in updated:
                    await self.runtime.stop(inst.name, dev)
            for dev, rd in [*stopped, *updated.items()]:
                try:
                    await self.runtime.start(rd.instance, dev, rd.device)
                except Exception:
                    log.exception("rollback: restarting device %s/%s failed", inst.name, dev)
            raise

    async def _persist(self, name: str, desired: Desired) -> None:
        if self.owns_all_devices:
            await self.backend.update_record(name, {"config": desired.config,
                                                    "devices": desired.devices,
                                                    "description": desired.description})
            return
        others = {k: v for k, v in desired.devices.items() if v.get("type") != "proxy"}
        await self.backend.update_record(name, {"config": desired.config, "devices": others,
                                                "description": desired.description})
        self.store.set_devices(name, _proxies(desired.devices))

    async def create(self, body: dict[str, Any]) -> str:
        async with self._lock:
            from lxdproxy.api.request_json import device_map, string_map

            devices = {k: v for k, v in device_map(body.get("devices")).items() if v is not None}
            body = {**body, "devices": devices, "config": string_map(body.get("config"), "config")}
            try:
                itype = InstanceType(body.get("type") or "container")
            except ValueError:
                raise ConfigError(f'Invalid instance type "{body.get("type")}"') from None
            new = self._validate(devices, itype, await self._forward_listen_addresses())
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
            if not self.owns_all_devices:
                self.store.set_devices(name, {})

    async def change_state(self, name: str, action: str) -> None:
        """``PUT /state`` for backends that support it (local: devices off/on, the process is
        never signalled). Start failures roll back: the instance stays stopped."""
        setter = getattr(self.backend, "set_stopped", None)
        async with self._lock:
            rec = await self.record(name)
            if action in ("freeze", "unfreeze"):
                raise NotSupportedError("Freezing instances is not supported by lxdproxy")
            if action not in ("start", "stop", "restart"):
                raise LxdError(f"Unknown action {action}", 400)
            if setter is None:
                raise NotSupportedError("Changing instance state is not supported by lxdproxy "
                                        "with this backend")
            running = rec["status"] == "Running"
            if action == "stop" and not running:
                raise LxdError("The instance is already stopped", 400)
            if action == "start" and running:
                raise LxdError("The instance is already running", 400)
            if action == "restart":
                # Fails (changing nothing) when the process is gone, so the user's next step,
                # pointing user.lxdproxy.pid at the new process, brings the devices back.
                await setter(name, False)
            if action in ("stop", "restart"):
                await self.runtime.stop_instance(name)
                await setter(name, True)
            if action == "stop":
                return
            await setter(name, False)
            inst = await self.backend.get_instance(name)
            stored = self._stored_proxies(self.store.get_devices(name), inst.type)
            started: list[str] = []
            try:
                for dev, parsed in sorted(stored.items()):
                    if parsed is None:
                        raise DeviceStartError(f'Failed to start device "{dev}": stored '
                                               "config no longer validates")
                    try:
                        await self.runtime.start(inst, dev, parsed)
                    except Exception as exc:
                        raise _start_error(dev, exc) from None
                    started.append(dev)
            except BaseException:
                for dev in reversed(started):
                    await self.runtime.stop(name, dev)
                await setter(name, True)
                raise

    # -- runtime following ----------------------------------------------------------------------

    async def reconcile(self) -> bool:
        """Realise every stored proxy device of every running instance. Device failures are
        logged; False when the instance list itself could not be read (LXD unreachable)."""
        async with self._lock:
            try:
                names = set(await self.backend.list_names())
            except Exception as exc:
                log.error("reconcile: cannot list instances: %s", exc)
                return False
            if not self.owns_all_devices:
                names &= set(self.store.device_instances())
            for name in sorted(names):
                try:
                    await self._realise(name)
                except Exception as exc:
                    log.error("reconcile: instance %s: %s", name, exc)
            return True

    async def reconcile_until_done(self, retry_s: float = 5.0) -> None:
        while not await self.reconcile():
            await asyncio.sleep(retry_s)

    async def _realise(self, name: str) -> None:
        try:
            inst = await self.backend.get_instance(name)
        except NotFoundError:
            await self.runtime.stop_instance(name)
            return
        if not inst.running:
            await self.runtime.stop_instance(name)
            return
        running = self.runtime.running(name)
        stored = self._stored_proxies(self.store.get_devices(name), inst.type)
        for dev in sorted(set(running) - set(stored)):
            await self.runtime.stop(name, dev)
        for dev, parsed in sorted(stored.items()):
            if parsed is None:
                log.error("device %s/%s: stored config no longer validates; not started",
                          name, dev)
                continue
            rd = running.get(dev)
            if rd is not None and rd.device == parsed and _same_target(rd.instance, inst):
                continue
            try:
                await self.runtime.start(inst, dev, parsed)
            except Exception as exc:
                log.error("%s (instance %s)", _start_error(dev, exc).message, name)

    def _instance_changed(self, name: str) -> Any:
        # Called from inside a write (update_record) too: never wait for the lock there.
        async def follow() -> None:
            async with self._lock:
                await self._realise(name)

        task = asyncio.get_running_loop().create_task(follow())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return _done()

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _noop() -> None:
    return None


def _done() -> Any:
    return _noop()


def _same_target(a: Instance, b: Instance) -> bool:
    return (a.pid, a.netns, a.nics, a.type) == (b.pid, b.netns, b.nics, b.type)
