"""The code that enters namespaces: per-netns threads and the namespace helper process (plus
``forward/socket_pool.py``, whose loop thread enters a target netns with ``netns.setns`` for one
batch of sockets and comes back)."""

from lxdproxy.netns.executor import NetnsExecutor, netns_executor, release_netns_executor
from lxdproxy.netns.helper import NamespaceHelper
from lxdproxy.netns.namespaces import Namespaces, ns_identity

__all__ = ["NamespaceHelper", "Namespaces", "NetnsExecutor", "netns_executor", "ns_identity",
           "release_netns_executor"]
