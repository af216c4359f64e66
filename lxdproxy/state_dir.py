"""The state directory's permissions: readable by root only (issue 12: the database, with
every instance's config and devices, was 0644).

Checked once at start, before the store opens, and fixed with a warning:
- the directory 0700; 0711 when the API socket lives in it, so the socket's own mode (0660,
  a group of operators) still decides who may connect (LXD's /var/lib/lxd is 0711 too);
  nobody else may list it;
- the database, its WAL and SHM files, the TLS key and the trust store 0600.
A database that does not exist yet is created 0600 here, so there is no moment in which
another user could open it (SQLite then creates the WAL and SHM files with the same mode).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("lxdproxy.state_dir")

DATABASE = "lxdproxy.db"
PRIVATE_FILES = (DATABASE, f"{DATABASE}-wal", f"{DATABASE}-shm", "server.key", "trust.json",
                 "trust.json.lock", "daemon.lock")
FILE_MODE = 0o600


def directory_mode(state_dir: Path, api_socket: Path) -> int:
    return 0o711 if api_socket.parent == state_dir else 0o700


def prepare_state_dir(state_dir: Path, api_socket: Path) -> list[str]:
    """Create or fix the state directory and its private files; returns the warnings logged
    (one per thing that was fixed)."""
    warnings: list[str] = []
    want_dir = directory_mode(state_dir, api_socket)
    if not state_dir.exists():
        state_dir.mkdir(parents=True, mode=want_dir)
    _fix(state_dir, want_dir, warnings, directory=True)
    db = state_dir / DATABASE
    if not db.exists():
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, FILE_MODE))
    for name in PRIVATE_FILES:
        _fix(state_dir / name, FILE_MODE, warnings, directory=False)
    for warning in warnings:
        log.warning("%s", warning)
    return warnings


def _fix(path: Path, want: int, warnings: list[str], *, directory: bool) -> None:
    try:
        st = path.lstat()
    except FileNotFoundError:
        return
    kind_ok = stat.S_ISDIR(st.st_mode) if directory else stat.S_ISREG(st.st_mode)
    if not kind_ok:
        # Never chmod through a symlink (it would change the file it points at).
        what = "a directory" if directory else "a regular file"
        warnings.append(f"{path} is not {what}: its permissions were left alone")
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode & ~want:
        os.chmod(path, mode & want)
        warnings.append(f"{path} had mode {mode:04o}, open to more than root: changed to "
                        f"{mode & want:04o}")
    if st.st_uid != os.geteuid():
        warnings.append(f"{path} is owned by uid {st.st_uid}, not by the daemon (uid "
                        f"{os.geteuid()})")
