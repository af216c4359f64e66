"""CPU time and memory of a process and its descendants, from /proc."""

from __future__ import annotations

import os
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for task in task_dir.iterdir():
            text = (task / "children").read_text()
            kids.extend(int(x) for x in text.split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return kids


def tree(pid: int) -> list[int]:
    """pid and all its live descendants (bounded: a process tree here is a handful of processes)."""
    out, todo = [], [pid]
    while todo and len(out) < 10000:
        p = todo.pop()
        out.append(p)
        todo.extend(_children(p))
    return out


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, system) seconds of each pid's whole tree: utime+cutime and stime+cstime (all threads,
    reaped children included). The split tells a proxy's own code from the kernel work its system
    calls do (for a proxy on loopback/veth that includes the TCP stack of both connections)."""
    user = system = 0
    for p in dict.fromkeys(p for root in pids for p in tree(root)):  # each process once
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        # after the ")": state is field 3, utime/stime/cutime/cstime are fields 14..17
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        user += utime + cutime
        system += stime + cstime
    return user / TICK, system / TICK


def cpu_seconds(pids: list[int]) -> float:
    """utime+stime (all threads) plus cutime+cstime (reaped children) of each pid's whole tree."""
    return sum(cpu_split(pids))


def _status_kib(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def memory_kib(pids: list[int]) -> dict[str, int]:
    """Summed VmRSS and Pss over each pid's tree. RSS counts shared pages (binary text, libs) once per
    process, so N copies of one program overstate; Pss splits shared pages between their users."""
    procs = list(dict.fromkeys(p for root in pids for p in tree(root)))  # each process once
    return {
        "rss_kib": sum(_status_kib(p, "VmRSS") for p in procs),
        "pss_kib": sum(_pss_kib(p) for p in procs),
        "processes": len(procs),
    }


def memory_by_process(pids: list[int]) -> list[dict[str, int | str]]:
    """VmRSS/Pss of each process of each pid's tree, with its command line (trimmed)."""
    out: list[dict[str, int | str]] = []
    for p in dict.fromkeys(p for root in pids for p in tree(root)):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (FileNotFoundError, ProcessLookupError):
            continue
        out.append({"pid": p, "cmd": cmd.strip()[:160], "rss_kib": _status_kib(p, "VmRSS"),
                    "pss_kib": _pss_kib(p)})
    return out


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs from /proc/stat, for a machine-wide busy share."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # user nice system idle iowait irq softirq steal (guest is inside user)
    return total - idle, total
