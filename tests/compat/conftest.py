"""The checklist's daemon: started in lab.host for one test, stopped cleanly after it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from lab.checklist import Daemon


@pytest.fixture
def checklist_daemon(lab: Any, tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(lab, tmp_path).start()
    yield d
    assert d.stop() == 0, d.log.read_text()
