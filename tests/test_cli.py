"""The `mirror` command line: exit codes, messages without tracebacks, and JSON output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes import FakeTap, Fault, dachs_error, write_config

from mirror.cli import main


@pytest.fixture
def tap() -> Iterator[FakeTap]:
    with FakeTap(hard_limit=20).load_recorded() as server:
        yield server


def cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real command line in a child process."""
    env = {**os.environ, "COLUMNS": "250"}
    env.pop("MIRROR_CONFIG", None)
    return subprocess.run([sys.executable, "-m", "mirror.cli", *args], capture_output=True,
                          text=True, timeout=120, env=env, cwd=cwd)


def run_main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run `mirror.cli.main` in this process; an escaping exception fails the test."""
    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse refusing the arguments
        code = exc.code if isinstance(exc.code, int) else 2
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def source(tap: FakeTap, **extra: Any) -> dict[str, Any]:
    return {"name": "fake", "url": tap.url, **extra}


def test_status_before_any_sync_says_there_is_no_catalogue(tmp_path: Path) -> None:
    config = write_config(tmp_path, {"name": "fake", "url": "http://127.0.0.1:9/tap"})
    done = cli("--config", str(config), "status")
    assert done.returncode == 2
    assert "no catalogue" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert not (tmp_path / "cat" / "mirror.duckdb").exists()


def test_bad_config_exits_2_naming_the_key(tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, {"name": "fake", "url": "http://127.0.0.1:9/tap",
                                     "page_size": "lots"})
    code, _, err = run_main(capsys, "--config", str(config), "status")
    assert code == 2
    assert "source.page_size" in err
    assert "page_size = " in err  # the hint's valid example
    assert "Traceback" not in err


def test_missing_config_exits_2_with_a_hint(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MIRROR_CONFIG", raising=False)
    code, _, err = run_main(capsys, "status")
    assert code == 2
    assert "mirror.toml" in err and "--config" in err


def test_json_sync_prints_the_counts(tmp_path: Path, tap: FakeTap,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, source(tap))
    code, out, err = run_main(capsys, "--config", str(config), "--json", "sync")
    assert code == 0, err
    [report] = json.loads(out)
    rows = len(tap.ids())
    assert report["source"] == "fake" and report["status"] == "ok"
    assert (report["new"], report["changed"], report["withdrawn"], report["rows"]) == (
        rows, 0, 0, rows)
    assert report["upstream_count"] == report["local_count"] == rows
    assert report["proof_ok"] is True and report["errors"] == []


def test_json_status_after_a_sync(tmp_path: Path, tap: FakeTap,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, source(tap))
    code, _, err = run_main(capsys, "--config", str(config), "--quiet", "sync")
    assert code == 0, err
    tap.execute("DELETE FROM ivoa.obscore WHERE obs_publisher_did = ?", [tap.ids()[0]])
    code, _, err = run_main(capsys, "--config", str(config), "--quiet", "sync")
    assert code == 0, err
    code, out, _ = run_main(capsys, "--config", str(config), "--json", "status", "--runs", "5")
    assert code == 0
    status = json.loads(out)
    [src] = status["sources"]
    assert (src["name"], src["rows"], src["withdrawn"], src["runs"]) == (
        "fake", len(tap.ids()), 1, 2)
    assert src["last_status"] == "ok" and src["watermark_column"] == "last_modified"
    assert [r["status"] for r in status["runs"]] == ["ok", "ok"]


def test_json_flag_after_the_subcommand_works_too(tmp_path: Path, tap: FakeTap,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, source(tap))
    assert main(["--config", str(config), "--quiet", "sync"]) == 0
    capsys.readouterr()
    code, out, err = run_main(capsys, "--config", str(config), "status", "--json")
    assert code == 0, err
    assert json.loads(out)["sources"][0]["rows"] == len(tap.ids())


def test_sync_that_fails_exits_1_and_reports_the_error(tmp_path: Path, tap: FakeTap,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, source(tap))
    tap.inject(Fault(400, body=dachs_error("table ivoa.obscore is being rebuilt"),
                     match="dataproduct_type", times=100))
    code, out, _ = run_main(capsys, "--config", str(config), "--json", "sync")
    assert code == 1
    [report] = json.loads(out)
    assert report["status"] == "failed"
    assert any("being rebuilt" in e for e in report["errors"])


def test_text_sync_and_status_name_the_source_and_counts(
        tmp_path: Path, tap: FakeTap, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, source(tap))
    code, out, _ = run_main(capsys, "--config", str(config), "sync")
    assert code == 0
    assert "fake" in out and f"{len(tap.ids())} new" in out
    code, out, _ = run_main(capsys, "--config", str(config), "status")
    assert code == 0
    assert "fake" in out and str(len(tap.ids())) in out


def test_unknown_source_exits_2_listing_the_configured_ones(
        tmp_path: Path, tap: FakeTap, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, source(tap))
    code, _, err = run_main(capsys, "--config", str(config), "sync", "nosuch")
    assert code == 2
    assert "nosuch" in err and "fake" in err
    assert "Traceback" not in err


def test_init_creates_the_catalogue(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, {"name": "fake", "url": "http://127.0.0.1:9/tap"})
    code, out, _ = run_main(capsys, "--config", str(config), "--json", "init")
    assert code == 0
    data = json.loads(out)
    assert Path(data["catalogue"]).is_file() and data["revision"]
