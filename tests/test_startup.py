"""Start-up: what every `mirror` command pays before it does anything.

Heavy modules are imported where they are used; this keeps a reader command (and the export's
critical path) from loading the server, the migrations, the HTML site or pandas."""

from __future__ import annotations

import json
import subprocess
import sys

NOT_AT_START = ("alembic", "pandas", "uvicorn", "starlette", "jinja2", "matplotlib", "mocpy",
                "requests", "pyvo", "astropy.table", "astropy.io.votable", "astropy.coordinates",
                "astropy.units", "astropy.io.fits", "scipy")


def test_importing_the_cli_loads_no_heavy_module() -> None:
    code = ("import json, sys, mirror.cli\n"
            f"print(json.dumps([m for m in {NOT_AT_START!r} if m in sys.modules]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert json.loads(out.stdout) == []


def test_a_reader_command_stays_light(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """`mirror status` on a current catalogue: no alembic (the revision is read directly)."""
    cfg = tmp_path / "mirror.toml"
    cfg.write_text('[catalogue]\npath = "m.duckdb"\n[store]\nroot = "store"\n[[source]]\n'
                   'name = "x"\nurl = "http://127.0.0.1:9/tap"\n')
    subprocess.run([sys.executable, "-m", "mirror.cli", "--config", str(cfg), "init"],
                   check=True, capture_output=True)
    code = ("import json, sys\n"
            "from mirror.cli import main\n"
            f"code = main(['--config', {str(cfg)!r}, '--json', 'status'])\n"
            f"print(json.dumps([code, [m for m in {NOT_AT_START!r} if m in sys.modules]]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    code_, loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert code_ == 0 and loaded == []
