"""The house style, enforced: ruff over the code, tests and benchmarks; mypy over the package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def test_ruff_finds_nothing() -> None:
    done = run("ruff", "check", "mirror", "tests", "bench")
    assert done.returncode == 0, done.stdout[-3000:]


def test_mypy_finds_nothing_in_the_package() -> None:
    done = run("mypy", "mirror")
    assert done.returncode == 0, done.stdout[-3000:]
