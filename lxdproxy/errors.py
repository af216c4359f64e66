"""Error types shared by every layer, each carrying the LXD message and the HTTP status.

The API maps these to LXD error envelopes in one place (``lxdproxy.api.errors``).
"""

from __future__ import annotations


class LxdError(Exception):
    """An error whose text is what LXD (or lxdproxy, where LXD has no word) shows the user."""

    status: int = 500

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status

    def __str__(self) -> str:
        return self.message


class ConfigError(LxdError):
    """The device configuration is invalid (the user's fault). Message is LXD's exact text."""

    status = 400


class DeviceStartError(LxdError):
    """A valid device could not be started (port in use, missing NIC address, ...)."""

    status = 400


class NotSupportedError(LxdError):
    """A feature lxdproxy deliberately does not implement."""

    status = 501


class NotFoundError(LxdError):
    status = 404
