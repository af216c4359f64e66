"""Profile a proxy under one workload: ``python -m benchmarks.profile connrate_2``.

Builds the lab and one peer, runs the workload in a loop while ``py-spy record`` samples one of
lxdproxy's data-plane workers (``--control-plane``: the control plane; ``pip install py-spy``),
then prints the hottest frames by self and by inclusive samples; the collapsed stacks (flamegraph
input) are kept in the --out directory. With ``--strace`` it counts the peer's system calls
instead (``strace -c -f``, every process of the peer; any peer but direct/NAT) and prints them
per unit of work (per connection, per datagram, per MiB), which is how two proxies' per-event
costs compare.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import workloads
from benchmarks.daemon import LxdproxyDaemon
from benchmarks.env import REPO, BenchEnv
from benchmarks.peers import INSTANCE_NAME, Forkproxy, Lxdproxy, Socat
from benchmarks.run import WORKLOADS
from benchmarks.sizes import QUICK


def summarize(collapsed: Path, top: int = 25) -> str:
    self_count: collections.Counter[str] = collections.Counter()
    incl_count: collections.Counter[str] = collections.Counter()
    total = 0
    for line in collapsed.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        frames = stack.split(";")
        total += count
        self_count[frames[-1]] += count
        for f in set(frames):
            incl_count[f] += count
    out = [f"{total} samples", "", "self %   frame"]
    out += [f"{100 * c / total:5.1f}   {f}" for f, c in self_count.most_common(top)]
    out += ["", "incl %   frame"]
    out += [f"{100 * c / total:5.1f}   {f}" for f, c in incl_count.most_common(top)]
    return "\n".join(out)


def strace_summary(path: Path, per: float, unit: str, top: int = 20) -> str:
    """strace -c table -> calls per unit of work."""
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0].replace(".", "").isdigit() and parts[-1] != "total":
            errors = int(parts[4]) if len(parts) == 6 else 0
            rows.append((parts[-1], int(parts[3]), errors, float(parts[1])))
    rows.sort(key=lambda r: -r[1])
    out = [f"syscalls per {unit} (errors per {unit}), total seconds under strace"]
    out += [f"{name:22} {calls / per:8.2f} ({errors / per:5.2f})  {secs:8.3f}s"
            for name, calls, errors, secs in rows[:top]]
    out.append(f"{'all':22} {sum(r[1] for r in rows) / per:8.2f}")
    return "\n".join(out)


def _units(workload: str, res: dict) -> tuple[float, str]:
    if workload.startswith("connrate"):
        return res["connections"], "connection"
    if workload == "udp":
        return res["received"], "datagram received"
    if workload == "latency":
        return res["requests"], "request"
    if workload == "device_add":
        return len(res["samples_ms"]), "device add"
    return res["bytes"] / (1 << 20), "MiB"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="benchmarks.profile", description=__doc__.splitlines()[0])
    p.add_argument("workload", choices=sorted([*WORKLOADS, "device_add"]))
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--out", type=Path, default=REPO / "benchmarks/results/profile")
    p.add_argument("--native", action="store_true", help="py-spy --native (C frames too)")
    p.add_argument("--strace", action="store_true", help="count system calls instead of sampling")
    p.add_argument("--peer", default="lxdproxy", choices=["lxdproxy", "forkproxy", "socat"])
    p.add_argument("--control-plane", action="store_true",
                   help="py-spy samples the control plane instead of the first worker")
    args = p.parse_args(argv)
    tool = shutil.which("strace") if args.strace else (
        shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy"))
    if not tool or not Path(tool).exists():
        print(f"benchmarks.profile: {'strace' if args.strace else 'py-spy'} is not installed",
              file=sys.stderr)
        return 1
    if args.peer != "lxdproxy" and not args.strace:
        print("benchmarks.profile: py-spy profiles the lxdproxy daemon only; use --strace", file=sys.stderr)
        return 2
    from lab import Lab

    args.out.mkdir(parents=True, exist_ok=True)
    suffix = "strace" if args.strace else ("native" if args.native else "py")
    out_file = args.out / f"{args.peer}-{args.workload}-{suffix}.txt"
    out_file.unlink(missing_ok=True)
    runs: list[dict] = []
    with Lab() as lab:
        env = BenchEnv(lab)
        env.start_servers()
        daemon = None
        peer = None
        try:
            if args.peer == "lxdproxy":
                daemon = LxdproxyDaemon(lab)
                daemon.start()
                daemon.add_instance(INSTANCE_NAME, env.inst)
                peer = Lxdproxy(env, 13000, daemon)
            else:
                peer = (Forkproxy if args.peer == "forkproxy" else Socat)(env, 12000)
            peer.start()
            pids = peer.cpu_pids()
            if args.strace:
                cmd = [tool, "-c", "-f", "-o", str(out_file)]
                for pid in pids:
                    cmd += ["-p", str(pid)]
            else:
                # pids: the control plane, then its workers (which do the forwarding)
                target = pids[0] if args.control_plane or len(pids) == 1 else pids[1]
                cmd = [tool, "record", "-p", str(target), "-d", str(int(args.seconds) + 2), "-r",
                       "250", "-f", "raw", "-o", str(out_file), "--threads"]
                # --native must pause the process to unwind C stacks; otherwise sample without pausing
                cmd.append("--native" if args.native else "--nonblocking")
            spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(1)
            end = time.monotonic() + args.seconds
            while time.monotonic() < end and len(runs) < 1000:
                fn = WORKLOADS.get(args.workload, workloads.device_add)
                res = fn(env, peer, QUICK)
                runs.append(res)
                print({k: round(v, 2) for k, v in res.items() if isinstance(v, int | float)})
            if args.strace:
                spy.send_signal(signal.SIGINT)  # strace writes its table when interrupted
            _, err = spy.communicate(timeout=args.seconds + 30)
            if not out_file.exists():
                print(f"{cmd[0]} failed ({spy.returncode}): {err.decode(errors='replace')[-800:]}",
                      file=sys.stderr)
                return 1
        finally:
            if peer is not None:
                peer.stop()
            if daemon is not None:
                daemon.stop()
    if args.strace:
        per = sum(_units(args.workload, r)[0] for r in runs)
        print(strace_summary(out_file, per, _units(args.workload, runs[0])[1]))
    else:
        print(summarize(out_file))
    print(f"\nraw: {out_file}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
