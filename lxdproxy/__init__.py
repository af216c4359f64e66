"""lxdproxy: LXD's proxy device in Python."""

__version__ = "0.1.0"
