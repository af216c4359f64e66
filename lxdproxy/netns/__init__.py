"""The only code that enters namespaces: per-netns threads and the namespace helper process."""

from lxdproxy.netns.executor import NetnsExecutor, netns_executor, release_netns_executor
from lxdproxy.netns.helper import NamespaceHelper
from lxdproxy.netns.namespaces import Namespaces, ns_identity

__all__ = ["NamespaceHelper", "Namespaces", "NetnsExecutor", "netns_executor", "ns_identity",
           "release_netns_executor"]
