"""Shared fixtures. The DaCHS upstream is started once per test run, never per test."""

from __future__ import annotations

import os
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
UPSTREAM_DIR = HERE / "upstream"
UPSTREAM_LIMITS = {"UPSTREAM_DEFAULT_MAXREC": "500", "UPSTREAM_HARD_MAXREC": "1000"}
TAP_URL = f"http://127.0.0.1:{os.environ.get('UPSTREAM_PORT', '8080')}/tap"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Integration tests share one upstream and mutate it: run them last, in file order."""
    items.sort(key=lambda item: item.get_closest_marker("integration") is not None)


@pytest.fixture(scope="session")
def upstream() -> Iterator[str]:
    """The DaCHS TAP service with row limits 500/1000, started once (idempotent start.sh)."""
    if os.environ.get("MIRROR_UPSTREAM_READY") != "1":
        env = {**os.environ, **UPSTREAM_LIMITS}
        done = subprocess.run(["bash", str(UPSTREAM_DIR / "start.sh")], env=env,
                              capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(f"the DaCHS upstream did not start:\n{done.stderr[-3000:]}")
    with urllib.request.urlopen(f"{TAP_URL}/availability", timeout=30) as r:
        assert r.status == 200
    yield TAP_URL


@pytest.fixture()
def evolve(upstream: str):
    """Run `evolve.sh OP N` and return the changes.jsonl records of that step."""
    import json

    changes = Path("/var/gavo/inputs/sdp/changes.jsonl")

    def run(op: str, n: int) -> list[dict]:
        before = changes.read_text().count("\n") if changes.exists() else 0
        subprocess.run(["bash", str(UPSTREAM_DIR / "evolve.sh"), op, str(n)], check=True,
                       capture_output=True, timeout=120)
        lines = changes.read_text().splitlines()[before:]
        return [json.loads(line) for line in lines if line.strip()]

    return run
