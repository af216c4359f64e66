"""An earlier commit's lxdproxy as a peer in the same run (``scripts/bench --baseline REV``).

A figure recorded against older code on another day is not a fact today (kernel, load, the
peers' own CPU per unit all move), so a target stated as "no worse than the code we had" is
checked by running that code beside the current one: ``git archive REV`` of the ``lxdproxy``
package into a temporary directory, which ``LxdproxyDaemon(source=...)`` puts first on the
daemon's PYTHONPATH (this checkout's venv supplies the dependencies).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.env import REPO


class BaselineError(RuntimeError):
    pass


def resolve(rev: str) -> str:
    """The full commit id of ``rev`` in this checkout."""
    done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise BaselineError(f"--baseline {rev}: not a commit in {REPO}")
    return done.stdout.strip()


def extract(commit: str) -> Path:
    """The ``lxdproxy`` package at ``commit``, in a new temporary directory (remove it with cleanup)."""
    done = subprocess.run(["git", "-C", str(REPO), "archive", "--format=tar", commit, "lxdproxy"],
                          capture_output=True)
    if done.returncode != 0:
        raise BaselineError(f"git archive {commit[:12]}: {done.stderr.decode(errors='replace').strip()}")
    root = Path(tempfile.mkdtemp(prefix=f"lxdproxy-baseline-{commit[:8]}-"))
    with tarfile.open(fileobj=io.BytesIO(done.stdout)) as tar:
        tar.extractall(root, filter="data")
    return root


def process_options(root: Path) -> dict[str, Any]:
    """Popen options that make a Python process (and the workers it spawns) import ``root``'s
    lxdproxy: PYTHONPATH, and the working directory too, because ``python -m`` and ``-c`` put
    the working directory ahead of PYTHONPATH (from this checkout, its own code would win)."""
    return {"env": {**os.environ, "PYTHONPATH": str(root)}, "cwd": root}


def cleanup(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
