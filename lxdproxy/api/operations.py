"""In-memory LXD operations.

Every change is finished before the 202 is sent, so task operations are born final. The one
exception is LXD's token class: a certificate add token is an operation that stays ``Running``
until it is redeemed or cancelled (``DELETE /1.0/operations/<id>``), exactly as in LXD 5.0.2. That is what the
Go ``lxc`` client needs when ``/1.0/events`` is absent (an already-final operation in the 202 body
means no events are waited for). Real LXD drops finished operations after ~5 s, which races
pylxd's ``GET /1.0/operations/<id>``; we keep them readable for ``RETENTION_S``.
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from lxdproxy.errors import LxdError, NotFoundError

RETENTION_S = 60.0


class OpStatus(enum.Enum):
    RUNNING = ("Running", 103)
    SUCCESS = ("Success", 200)
    FAILURE = ("Failure", 400)
    CANCELLED = ("Cancelled", 401)

    def __init__(self, text: str, code: int) -> None:
        self.text = text
        self.code = code


def _rfc3339_now() -> str:
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}000Z"


@dataclass(frozen=True)
class Operation:
    id: str
    description: str
    status: OpStatus
    resources: dict[str, list[str]] | None
    err: str = ""
    metadata: dict[str, Any] | None = None
    created_at: str = field(default_factory=_rfc3339_now)
    updated_at: str = ""
    finished_monotonic: float = 0.0
    op_class: str = "task"

    @property
    def may_cancel(self) -> bool:
        # LXD: token operations are always cancellable; our tasks are final before anyone asks.
        return self.op_class == "token"

    @property
    def url(self) -> str:
        return f"/1.0/operations/{self.id}"

    def to_json(self) -> dict[str, Any]:
        # Key order as captured from LXD 5.0.2.
        return {
            "id": self.id,
            "class": self.op_class,
            "description": self.description,
            "created_at": self.created_at,
            "updated_at": self.updated_at or self.created_at,
            "status": self.status.text,
            "status_code": self.status.code,
            "resources": self.resources,
            "metadata": self.metadata,
            "may_cancel": self.may_cancel,
            "err": self.err,
            "location": "none",
        }


def instance_resources(name: str) -> dict[str, list[str]]:
    # LXD 5.0.2 lists the instance under both collections.
    return {"containers": [f"/1.0/containers/{name}"], "instances": [f"/1.0/instances/{name}"]}


class OperationRegistry:
    def __init__(self, *, retention_s: float = RETENTION_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._ops: dict[str, Operation] = {}
        self._retention_s = retention_s
        self._clock = clock

    def finished(self, description: str, resources: dict[str, list[str]], *, err: str = "",
                 metadata: dict[str, Any] | None = None) -> Operation:
        self._expire()
        op = Operation(
            id=str(uuid.uuid4()),
            description=description,
            status=OpStatus.FAILURE if err else OpStatus.SUCCESS,
            resources=resources,
            err=err,
            metadata=metadata,
            finished_monotonic=self._clock(),
        )
        self._ops[op.id] = op
        return op

    def token(self, description: str, metadata: dict[str, Any]) -> Operation:
        """A running token operation (LXD's OperationClassToken): no resources, never expires."""
        self._expire()
        op = Operation(id=str(uuid.uuid4()), description=description, status=OpStatus.RUNNING,
                       resources=None, metadata=metadata, op_class="token")
        self._ops[op.id] = op
        return op

    def cancel(self, op_id: str) -> Operation:
        """LXD's Operation.Cancel: only a running, cancellable operation; it then expires like
        a finished one."""
        op = self.get(op_id)
        if op.status is not OpStatus.RUNNING:
            raise LxdError("Only running operations can be cancelled", 400)
        if not op.may_cancel:
            raise LxdError("This operation can't be cancelled", 400)
        cancelled = replace(op, status=OpStatus.CANCELLED, updated_at=_rfc3339_now(),
                            finished_monotonic=self._clock())
        self._ops[op_id] = cancelled
        return cancelled

    def running_tokens(self) -> list[Operation]:
        self._expire()
        return [op for op in self._ops.values()
                if op.op_class == "token" and op.status is OpStatus.RUNNING]

    def get(self, op_id: str) -> Operation:
        self._expire()
        try:
            return self._ops[op_id]
        except KeyError:
            raise NotFoundError("Operation not found") from None

    def listing(self) -> dict[str, list[str]]:
        self._expire()
        out: dict[str, list[str]] = {}
        for op in self._ops.values():
            out.setdefault(op.status.text.lower(), []).append(op.url)
        return out

    def all(self) -> list[Operation]:
        self._expire()
        return list(self._ops.values())

    def _expire(self) -> None:
        cutoff = self._clock() - self._retention_s
        for op_id in [i for i, op in self._ops.items()
                      if op.status is not OpStatus.RUNNING and op.finished_monotonic < cutoff]:
            del self._ops[op_id]
