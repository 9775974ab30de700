"""Benchmark: mirror's download engine against curl --parallel and aria2c, served by nginx.

nginx (own config in a temp dir, 127.0.0.1 only) serves generated files from /dev/shm; every
client writes into a fresh folder on /dev/shm. Printed, from one run, files/s and MB/s for:

    (a) 2,000 files of 100 KB
    (b) the same with 50 ms added to every request
    (c) 20 files of 50 MB

Clients, all at 16 transfers at once over HTTP/1.1 keep-alive:
    curl   one `curl --parallel --parallel-max 16` process, a config file of url/output pairs
    aria2c `aria2c -j16 -x1 -i FILE` (it fsyncs a control file per download)
    mirror `mirror.fetch.transport.Transport(concurrency=16, per_host=16, fsync=True)`, sha256 on,
           run in this process (interpreter start-up is not counted, the start of its sealer
           process is; curl's and aria2c's process start is counted, a few ms)
    mirror-full  the whole fetch path, as `mirror fetch` runs it (see run_mirror_full): big
           files, as in (c), on two network loops (`mirror.fetch.lanes`)

Each row also shows the CPU seconds of the run: the client's (its processes, for mirror this
process and its sealer) and nginx's workers'; with other work on the machine those move
less than the wall-clock figures.

Latency in (b): this kernel has no `netem` qdisc, so the 50 ms are added by nginx itself:
the echo module's `echo_sleep 0.05` (a timer, not a blocked worker) then `echo_exec` to the
static file. That is a per-request delay before the first byte, like a busy archive; the
network round trip stays that of loopback.

Needs nginx, libnginx-mod-http-echo (for b), aria2c and curl (see bench/README.md).

    python bench/fetch.py                # the full run (about 90 s)
    python bench/fetch.py --quick        # 200 small files, 2 large ones: a smoke check
    python bench/fetch.py --cases ac     # only (a) and (c)
"""

from __future__ import annotations

import argparse
import hashlib
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout

SHM = Path("/dev/shm")
ECHO_MODULE = Path("/usr/lib/nginx/modules/ngx_http_echo_module.so")
CONCURRENCY = 16
KB, MB = 1024, 1024 * 1024

NGINX_CONF = """\
{load_echo}
daemon off;
worker_processes 2;
pid {root}/nginx.pid;
error_log {root}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/octet-stream;
    client_body_temp_path {root}/tmp; proxy_temp_path {root}/tmp;
    fastcgi_temp_path {root}/tmp; uwsgi_temp_path {root}/tmp; scgi_temp_path {root}/tmp;
    sendfile on; tcp_nopush on; tcp_nodelay on;
    keepalive_requests 1000000; keepalive_timeout 120s;
    open_file_cache max=10000 inactive=60s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        root {root}/srv;
        location /files/ {{ }}
        {slow}
    }}
}}
"""
SLOW_LOCATION = "location ~ ^/slow/(.*)$ { echo_sleep 0.05; echo_exec /files/$1; }"


@dataclass
class Result:
    tool: str
    files: int
    nbytes: int
    seconds: float
    errors: int = 0
    note: str = ""
    cpu: float = 0.0  # CPU seconds of the client's processes during the run
    server_cpu: float = 0.0  # CPU seconds of nginx's workers during the run

    @property
    def files_s(self) -> float:
        return self.files / self.seconds

    @property
    def mb_s(self) -> float:
        return self.nbytes / MB / self.seconds


class Skipped(Exception):
    """A client that cannot run here; the reason is printed instead of figures."""


# -- fixtures -----------------------------------------------------------------------------------

def missing_tools() -> list[str]:
    return [t for t in ("nginx", "aria2c", "curl") if shutil.which(t) is None]


def make_files(folder: Path, count: int, size: int, tag: str) -> dict[str, str]:
    """`count` distinct files of `size` bytes; returns name -> sha256."""
    folder.mkdir(parents=True)
    block = os.urandom(size)
    digests = {}
    for i in range(count):
        name = f"{tag}{i:05d}.bin"
        data = i.to_bytes(8, "big") + block[8:]
        (folder / name).write_bytes(data)
        digests[name] = hashlib.sha256(data).hexdigest()
    return digests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_nginx(root: Path) -> tuple[subprocess.Popen[bytes], str, bool]:
    """nginx on a free loopback port with a config of its own; returns (process, base, slow)."""
    slow = ECHO_MODULE.exists()
    port = free_port()
    (root / "tmp").mkdir(exist_ok=True)
    conf = root / "nginx.conf"
    conf.write_text(NGINX_CONF.format(
        root=root, port=port, load_echo=f"load_module {ECHO_MODULE};" if slow else "",
        slow=SLOW_LOCATION if slow else ""))
    proc = subprocess.Popen(["nginx", "-p", str(root), "-c", str(conf)],
                            stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"nginx did not start: {proc.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, base, slow
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise SystemExit("nginx did not listen within 10 s")


def _stat(pid: int) -> list[str]:
    """The fields of /proc/PID/stat after the command name (state, ppid, ...)."""
    with open(f"/proc/{pid}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()


def workers_of(master: int) -> list[int]:
    """The pids whose parent is `master` (nginx's worker processes)."""
    out = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if int(_stat(int(name))[1]) == master:
                    out.append(int(name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def cpu_of(pids: list[int]) -> float:
    """User + system CPU seconds of the processes `pids` so far."""
    total = 0
    for pid in pids:
        try:
            fields = _stat(pid)
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / os.sysconf("SC_CLK_TCK")


def own_cpu() -> float:
    """CPU seconds of this process and of its children that have ended."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
        resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def stop_nginx(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGQUIT)  # graceful: finish and close
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- the clients --------------------------------------------------------------------------------

def check_files(out: Path, names: list[str], size: int) -> int:
    """How many of the expected files are missing or of the wrong size."""
    bad = 0
    for name in names:
        try:
            bad += (out / name).stat().st_size != size
        except FileNotFoundError:
            bad += 1
    return bad


def run_curl(urls: list[str], names: list[str], out: Path, size: int) -> Result:
    cfg = out.parent / f"{out.name}.curl.cfg"
    pairs = zip(urls, names, strict=True)
    cfg.write_text("".join(f'url = "{u}"\noutput = "{out / n}"\n' for u, n in pairs))
    t = time.perf_counter()
    argv = ["curl", "--parallel", "--parallel-max", str(CONCURRENCY), "--silent",
            "--no-progress-meter", "--show-error", "--http1.1", "--config", str(cfg)]
    done = subprocess.run(argv, capture_output=True, text=True)
    seconds = time.perf_counter() - t
    errors = check_files(out, names, size) + (done.returncode != 0)
    return Result("curl", len(urls), len(urls) * size, seconds, errors, done.stderr[-200:])


def run_aria2c(urls: list[str], names: list[str], out: Path, size: int) -> Result:
    listing = out.parent / f"{out.name}.aria2.txt"
    pairs = zip(urls, names, strict=True)
    listing.write_text("".join(f"{u}\n  out={n}\n" for u, n in pairs))
    t = time.perf_counter()
    done = subprocess.run(["aria2c", f"-j{CONCURRENCY}", "-x1", "-i", str(listing), "-d", str(out),
                           "--quiet=true", "--allow-overwrite=true", "--auto-file-renaming=false",
                           "--summary-interval=0"], capture_output=True, text=True)
    seconds = time.perf_counter() - t
    errors = check_files(out, names, size) + (done.returncode != 0)
    return Result("aria2c", len(urls), len(urls) * size, seconds, errors, done.stderr[-200:])


def run_mirror(urls: list[str], names: list[str], out: Path, size: int,
               digests: dict[str, str]) -> Result:
    from mirror.fetch.transport import Download, Transport

    transport = Transport(concurrency=CONCURRENCY, per_host=CONCURRENCY, fsync=True)
    pairs = zip(urls, names, strict=True)
    jobs = (Download(key=n, url=u, dest=out / f"{n}.part") for u, n in pairs)
    errors = 0
    t = time.perf_counter()
    try:
        for o in transport.run(jobs):
            errors += o.error is not None or o.sha256 != digests[o.key]  # type: ignore[index]
    finally:
        seconds = time.perf_counter() - t
        transport.close()
    return Result("mirror", len(urls), len(urls) * size, seconds, errors)


def run_mirror_full(urls: list[str], names: list[str], out: Path, size: int) -> Result:
    """mirror's whole fetch path, as `mirror fetch` runs it: selection into the product queue,
    store layout, download, verification, atomic durable commit, batched catalogue records.

    The catalogue (on the same tmpfs) holds one mirrored ObsCore row per file; only the fetch
    itself is timed."""
    import pyarrow as pa

    from mirror.catalogue.engine import Catalogue, raw
    from mirror.catalogue.obscore import data_table, ensure_table
    from mirror.catalogue.types import ColumnSpec
    from mirror.config import load_config
    from mirror.fetch.fetcher import Fetcher

    base = urls[0].rsplit("/", 1)[0]
    cfg = out / "mirror.toml"
    cfg.write_text(f'[catalogue]\npath = "cat/m.duckdb"\n[store]\nroot = "store"\n'
                   f"[fetch]\nconcurrency = {CONCURRENCY}\nper_host = {CONCURRENCY}\n"
                   f'[[source]]\nname = "bench"\nurl = "{base}"\n')
    config = load_config(cfg)
    text = ("obs_publisher_did", "access_url", "access_format", "obs_collection",
            "dataproduct_type")
    specs = [ColumnSpec(n) for n in text] + [ColumnSpec("access_estsize", datatype="long")]
    rows = pa.table({
        "obs_publisher_did": [f"ivo://bench/{n}" for n in names], "access_url": urls,
        "access_format": ["application/octet-stream"] * len(urls),
        "obs_collection": ["BENCH"] * len(urls), "dataproduct_type": ["image"] * len(urls),
        "access_estsize": [size // 1024] * len(urls)})
    catalogue = Catalogue.open(config.catalogue_path)
    try:
        with catalogue.begin() as conn:
            ensure_table(conn, "bench", specs)
            raw(conn).register("rows", rows)
            conn.exec_driver_sql(
                f"INSERT INTO {data_table('bench')} ({', '.join(rows.column_names)}, "
                "_run_id, _updated_at) SELECT *, 0, now() FROM rows")
        t = time.perf_counter()
        report = Fetcher(catalogue, config, config.sources[0]).run()
        seconds = time.perf_counter() - t
    finally:
        catalogue.close()
    errors = report.failed + (len(urls) - report.done)
    return Result("mirror-full", len(urls), len(urls) * size, seconds, errors,
                  note="; ".join(report.errors[:2]))


# -- the scenarios ------------------------------------------------------------------------------

def scenario(label: str, base: str, names: list[str], size: int, digests: dict[str, str],
             outroot: Path, repeat: int, full: bool, servers: list[int]) -> dict[str, Result]:
    """Run every client once untimed (first touches of memory are slow in a VM), then `repeat`
    times, each into a fresh folder, in a rotated order; keep each client's best time (errors
    are summed over all runs)."""
    urls = [f"{base}/{n}" for n in names]
    clients: dict[str, Callable[[Path], Result]] = {
        "curl": lambda out: run_curl(urls, names, out, size),
        "aria2c": lambda out: run_aria2c(urls, names, out, size),
        "mirror": lambda out: run_mirror(urls, names, out, size, digests),
    }
    if full:
        clients["mirror-full"] = lambda out: run_mirror_full(urls, names, out, size)
    runs: dict[str, list[Result]] = {tool: [] for tool in clients}
    errors = dict.fromkeys(clients, 0)
    order = list(clients)
    for rnd in range(repeat + 1):  # round 0 warms up and is not counted
        for tool in order:
            if runs[tool] and runs[tool][0].note.startswith("skipped"):
                continue
            out = outroot / f"{label}-{tool}-{rnd}"
            out.mkdir(parents=True)
            try:
                cpu, server_cpu = own_cpu(), cpu_of(servers)
                r = clients[tool](out)
                r.cpu, r.server_cpu = own_cpu() - cpu, cpu_of(servers) - server_cpu
            except NotImplementedError as exc:
                r = Result(tool, 0, 0, float("nan"), note=f"skipped: {exc}")
            errors[tool] += r.errors
            if rnd > 0 or r.note.startswith("skipped"):
                runs[tool].append(r)
            shutil.rmtree(out)  # free the memory; the next run gets a new folder anyway
        order = order[1:] + order[:1]
    best = {tool: min(rs, key=lambda r: r.seconds) for tool, rs in runs.items()}
    for tool, r in best.items():
        r.errors = errors[tool]
    print(f"\n({label}) {len(names)} files of {fmt_size(size)}, best of {repeat}")
    print(f"    {'client':<12}{'files/s':>10}{'MB/s':>10}{'seconds':>9}{'cpu s':>8}"
          f"{'nginx s':>9}  errors")
    for r in best.values():
        if r.note.startswith("skipped"):
            print(f"    {r.tool:<12}{r.note}")
        else:
            print(f"    {r.tool:<12}{r.files_s:>10.0f}{r.mb_s:>10.1f}{r.seconds:>9.2f}"
                  f"{r.cpu:>8.2f}{r.server_cpu:>9.2f}  {r.errors}"
                  + (f"  {r.note.strip()}" if r.errors and r.note else ""))
    return best


def fmt_size(n: int) -> str:
    return f"{n // MB} MB" if n >= MB else f"{n // KB} KB"


def verdict(name: str, ratio: float, target: float, what: str) -> bool:
    ok = ratio >= target
    print(f"    {name}: {what} = {ratio:.2f} (target >= {target:.2f})  {'PASS' if ok else 'FAIL'}")
    return ok


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="200 small files, 2 large: smoke check")
    ap.add_argument("--repeat", type=int, default=None, help="runs per client (best is kept)")
    ap.add_argument("--cases", default="abc", help="which scenarios to run, e.g. 'a' or 'ac'")
    args = ap.parse_args()
    missing = missing_tools()
    if missing:
        print(f"bench/fetch.py needs {', '.join(missing)}: "
              "apt-get install -y nginx aria2 curl libnginx-mod-http-echo", file=sys.stderr)
        return 2
    try:
        import mirror.fetch.fetcher  # noqa: F401
        full = True
    except Exception:  # noqa: BLE001 - any failure means "not there yet"
        full = False
        print("note: mirror.fetch.fetcher is not importable: the full path is not measured")
    small_n, large_n = (200, 2) if args.quick else (2000, 20)
    repeat = args.repeat or (1 if args.quick else 5)
    started = time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="mirror-bench-fetch-", dir=SHM))
    root.chmod(0o755)  # nginx's workers (www-data when started as root) must read srv/
    nginx = None
    try:
        srv = root / "srv" / "files"
        small = make_files(srv / "small", small_n, 100 * KB, "s")
        large = make_files(srv / "large", large_n, 50 * MB, "l") if "c" in args.cases else {}
        nginx, base, slow = start_nginx(root)
        servers = workers_of(nginx.pid)
        print(f"nginx {base}, files on {srv}, downloads into fresh folders under {root}")
        outroot = root / "out"
        a = b = c = None
        if "a" in args.cases:
            a = scenario("a", f"{base}/files/small", sorted(small), 100 * KB, small, outroot,
                         repeat, full, servers)
        if "b" in args.cases and slow:
            b = scenario("b", f"{base}/slow/small", sorted(small), 100 * KB, small, outroot,
                         1, full, servers)
        elif "b" in args.cases:
            print(f"\n(b) skipped: {ECHO_MODULE} missing (apt-get install libnginx-mod-http-echo)")
        if "c" in args.cases:
            c = scenario("c", f"{base}/files/large", sorted(large), 50 * MB, large, outroot,
                         repeat, full, servers)
        # the targets are for mirror's whole path (verify, durable store, catalogue record)
        who = "mirror-full" if full else "mirror"
        print(f"\ntargets ({who}), load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        oks = []
        if a is not None:
            oks.append(verdict("(a)", a[who].files_s / a["aria2c"].files_s, 1.0,
                               f"{who} files/s / aria2c files/s"))
        if b is not None:
            oks.append(verdict("(b)", b[who].files_s / b["curl"].files_s, 0.95,
                               f"{who} files/s / curl files/s"))
        if c is not None:
            oks.append(verdict("(c)", c[who].mb_s / c["curl"].mb_s, 1.0,
                               f"{who} MB/s (sha256 on) / curl MB/s"))
        errors = sum(r.errors for s in (a, b, c) if s for r in s.values())
        print(f"\n{sum(oks)}/{len(oks)} targets met, {errors} download errors, "
              f"{time.monotonic() - started:.0f} s in all")
        return 0 if errors == 0 else 1
    finally:
        if nginx is not None:
            stop_nginx(nginx)
        if os.environ.get("BENCH_KEEP"):
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
