"""Durable desired state (SQLite): local instances and shim-owned devices."""

from lxdproxy.store.db import Devices, InstanceRow, Store, StoreError, WarningRow

__all__ = ["Devices", "InstanceRow", "Store", "StoreError", "WarningRow"]
