"""The data plane in worker processes, and the control protocol to them.

``WorkerPool`` (control plane side) has the surface of the in-process ``Forwarder``; each worker
(``python -m lxdproxy.workers.worker_main``) runs the forwarding code of ``lxdproxy.forward`` on
listening sockets the pool opened and handed over. See docs/architecture.md.
"""

from lxdproxy.workers.pool import WorkerDevice, WorkerPool, WorkerPoolStats

__all__ = ["WorkerDevice", "WorkerPool", "WorkerPoolStats"]
