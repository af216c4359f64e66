"""Where an instance's namespaces are: its init PID's, or a named netns."""

from __future__ import annotations

from lxdproxy.instances.model import Instance
from lxdproxy.netns import Namespaces


def instance_namespaces(instance: Instance) -> Namespaces:
    """Raises ProcessLookupError / FileNotFoundError when they are gone."""
    if instance.pid:
        return Namespaces.of_pid(instance.pid)
    if instance.netns:
        return Namespaces.of_netns(instance.netns)
    raise ProcessLookupError(f"Instance {instance.name!r} has neither a PID nor a netns")
