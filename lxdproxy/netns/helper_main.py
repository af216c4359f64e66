"""The namespace helper process: joins an instance's user/mount/net namespaces, optionally drops
to a uid/gid, and makes sockets on request, handing the fds back over SCM_RIGHTS.

It exists because setns() into a mount or user namespace is refused to a multi-threaded process,
and because a path the instance controls must be resolved inside the instance's own mount
namespace (resolving /proc/<pid>/root/... from the host follows the instance's symlinks out to the
host: a container escape). Standard library only; started as
``python -m lxdproxy.netns.helper_main FD``.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import signal
import socket
import stat
import sys

CLONE_NEWNS = 0x00020000
CLONE_NEWUSER = 0x10000000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1

_libc = ctypes.CDLL(None, use_errno=True)

TYPES = {"stream": socket.SOCK_STREAM, "dgram": socket.SOCK_DGRAM, "seqpacket": socket.SOCK_SEQPACKET}


def _setns(fd: int, nstype: int, what: str) -> None:
    if _libc.setns(fd, nstype) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{os.strerror(err)} - Failed setns to {what} namespace")


def enter(user: str | None, mnt: str | None, net: str | None) -> None:
    # Open every namespace file first: after joining the mount namespace, /proc is the instance's.
    fds = {k: os.open(p, os.O_RDONLY | os.O_CLOEXEC) for k, p in (("user", user), ("mnt", mnt), ("net", net)) if p}
    if "user" in fds:
        _setns(fds["user"], CLONE_NEWUSER, "user")
        # As LXD's forkproxy does: become root of the joined user namespace.
        try:
            os.setgroups([])
        except PermissionError:
            pass
        os.setgid(0)
        os.setuid(0)
    if "mnt" in fds:
        _setns(fds["mnt"], CLONE_NEWNS, "mount")  # also resets root and cwd to the namespace's
        os.chdir("/")
    if "net" in fds:
        _setns(fds["net"], CLONE_NEWNET, "network")
    for fd in fds.values():
        os.close(fd)


def drop_privileges(uid: int | None, gid: int | None) -> None:
    if not uid and not gid:
        return
    try:
        os.setgroups([])
    except PermissionError:
        pass
    os.setgid(gid or 0)
    os.setuid(uid or 0)


def _address(path: str) -> str | bytes:
    # unix:@name is a Linux abstract socket: the @ becomes the leading NUL.
    return b"\0" + path[1:].encode() if path.startswith("@") else path


def _identity(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino]


def refuse_protected(path: str, protected: dict | None) -> None:
    """Refuse a listen path inside the daemon's state directory or at its API socket.

    Compared by (st_dev, st_ino) of the directories, resolved here, in the mount namespace the
    socket is bound in: a symlinked or bind-mounted way to the state directory is caught too."""
    if not protected:
        return
    dirs = [list(d) for d in protected.get("dirs", ())]
    entries = [(list(d), name) for d, name in protected.get("entries", ())]
    parent = os.path.dirname(path) or "."
    try:
        st = os.stat(parent)
    except OSError:
        return  # bind() reports the missing directory itself
    here = _identity(st)
    if [here, os.path.basename(path)] in [[d, n] for d, n in entries]:
        raise PermissionError(errno.EACCES, f"{path} is the daemon's API socket")
    for _ in range(256):  # walk up to the root
        if here in dirs:
            raise PermissionError(errno.EACCES, f"{path} is inside the daemon's state directory")
        parent = os.path.join(parent, "..")
        up = _identity(os.stat(parent))
        if up == here:
            return
        here = up


def _listening(path: str) -> bool:
    """Whether a program accepts on the socket file at ``path`` (ECONNREFUSED: nobody does)."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        # EAGAIN (its backlog is full), EPROTOTYPE (a datagram socket), EACCES...: alive.
        return True
    finally:
        probe.close()
    return True


def bind_unix(req: dict) -> tuple[socket.socket, dict]:
    path = req["path"]
    if not path.startswith("@"):
        refuse_protected(path, req.get("protected"))
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            pass
        else:
            # LXD unlinks whatever is there (quirk: any file, even a live socket of another
            # program). We replace only a stale socket: one nobody accepts on.
            if not stat.S_ISSOCK(st.st_mode):
                raise FileExistsError(17, f"{path} exists and is not a socket")
            if _listening(path):
                raise OSError(errno.EADDRINUSE, f"{path} is in use: another program is "
                                                "listening on it")
            os.unlink(path)
    sock = socket.socket(socket.AF_UNIX, TYPES[req["type"]])
    try:
        old = os.umask(0o777)  # nobody may connect before chown/chmod are done
        try:
            sock.bind(_address(path))
        finally:
            os.umask(old)
        extra: dict = {}
        if not path.startswith("@"):
            uid, gid = req.get("uid"), req.get("gid")
            if uid is not None or gid is not None:
                os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
            os.chmod(path, req.get("mode", 0o644))
            # What unlink() compares against, so stop never removes a file put there since.
            extra["identity"] = _identity(os.lstat(path))
        if req["type"] != "dgram":
            sock.listen(req.get("backlog", 4096))
    except BaseException:
        sock.close()
        raise
    return sock, extra


def bind_inet(req: dict) -> socket.socket:
    """A tcp/udp listener made by this process, so it carries this process's ids (the owner
    in /proc/net/tcp, netfilter's skuid) and the kernel checks them (ports below
    ip_unprivileged_port_start need CAP_NET_BIND_SERVICE)."""
    sock = socket.socket(req["family"], TYPES[req["type"]])
    try:
        if req["type"] == "stream":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if req["family"] == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if req["dual_stack"] else 1)
        sock.bind((req["host"], req["port"]))
        if req["type"] == "stream":
            sock.listen(req.get("backlog", 4096))
    except BaseException:
        sock.close()
        raise
    return sock


def connect_unix(req: dict) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, TYPES[req["type"]])
    sock.settimeout(req.get("timeout", 5.0))
    try:
        sock.connect(_address(req["path"]))
    except BaseException:
        sock.close()
        raise
    return sock


def connect_inet(req: dict) -> socket.socket:
    sock = socket.socket(req["family"], TYPES[req["type"]])
    sock.settimeout(req.get("timeout", 5.0))
    try:
        sock.connect((req["host"], req["port"]))
    except BaseException:
        sock.close()
        raise
    return sock


def new_socket(req: dict) -> socket.socket:
    return socket.socket(req["family"], TYPES[req["type"]])


def unlink(req: dict) -> None:
    """Remove the socket file ``bind_unix`` made, only if it is still that one (same device
    and inode, when given): never a file someone else put at the path since."""
    try:
        st = os.lstat(req["path"])
    except FileNotFoundError:
        return None
    expected = req.get("identity")
    if stat.S_ISSOCK(st.st_mode) and (expected is None or _identity(st) == list(expected)):
        os.unlink(req["path"])
    return None


OPS = {"bind_unix": bind_unix, "bind_inet": bind_inet, "connect_unix": connect_unix, "connect_inet": connect_inet,
       "socket": new_socket, "unlink": unlink}


def serve(chan: socket.socket) -> None:
    while True:
        data = chan.recv(65536)
        if not data:
            return
        req = json.loads(data)
        try:
            result = OPS[req["op"]](req)
        except OSError as exc:
            chan.send(json.dumps({"ok": False, "errno": exc.errno or 0,
                                  "error": exc.strerror or str(exc)}).encode())
            continue
        except Exception as exc:  # a bad request must not kill the helper
            chan.send(json.dumps({"ok": False, "errno": 0, "error": str(exc)}).encode())
            continue
        extra: dict = {}
        if isinstance(result, tuple):
            result, extra = result
        if isinstance(result, socket.socket):
            result.setblocking(False)
            socket.send_fds(chan, [json.dumps({"ok": True, "fd": True, **extra}).encode()],
                            [result.fileno()])
            result.close()
        else:
            chan.send(b'{"ok": true}')


def main() -> int:
    chan = socket.socket(fileno=int(sys.argv[1]))
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    cfg = json.loads(chan.recv(65536))
    try:
        enter(cfg.get("user"), cfg.get("mnt"), cfg.get("net"))
        drop_privileges(cfg.get("uid"), cfg.get("gid"))
    except OSError as exc:
        chan.send(json.dumps({"ok": False, "errno": exc.errno or 0, "error": exc.strerror or str(exc)}).encode())
        return 1
    chan.send(b'{"ok": true}')
    serve(chan)
    return 0


if __name__ == "__main__":
    sys.exit(main())
