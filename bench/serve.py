"""Benchmark: small cone searches through the local TAP service against the ADQL layer itself.

A temporary catalogue of synthetic ObsCore rows (bench/cone.py's layout: `_hpx`, clustered) is
served by `LocalService` (uvicorn on a thread of this process, as `mirror serve` runs it). In
the same run, for the same random centres, it measures:

* overhead: per centre, `Runner.query(ADQL)` in this process (translation, prefilter, exact
  test, Arrow) and `GET /sync` (VOTable BINARY2) from a client process on one keep-alive
  connection, one right after the other (which goes first alternates). The service's overhead
  is the median of the service's latencies minus the median of the direct calls'. Taking the
  two in pairs matters on a shared machine: the same direct query ran 2.7 ms in one block of
  80 and 4.7 ms in the next, more than the overhead being measured;
* throughput, 1 client: the centres back to back on one connection;
* throughput, 8 clients: 8 client processes at once, each on its own keep-alive connection;

checks that the service answers the same number of rows as the direct call for every centre,
and prints queries per second with the ratios against the targets (overhead < 2 ms per query;
8 clients >= 1.5x one client). The exit code is 0 either way.

    python bench/serve.py                   # 1,000,000 rows, 800 0.1-degree cones
    python bench/serve.py --rows 200000 --queries 100   # a smoke check
"""

from __future__ import annotations

import argparse
import http.client
import io
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io.votable import parse_single_table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from cone import build, sky  # noqa: E402

from mirror.catalogue import engine  # noqa: E402
from mirror.catalogue.engine import Catalogue  # noqa: E402
from mirror.config import Config, QueryConfig, ServeConfig  # noqa: E402

RADIUS = 0.1
TARGETS = {"overhead_ms": 2.0, "scaling": 1.5}
QUERY = ("SELECT obs_publisher_did, s_ra, s_dec, t_min, em_min FROM ivoa.obscore "
         "WHERE 1 = CONTAINS(POINT('ICRS', s_ra, s_dec), CIRCLE('ICRS', {ra}, {dec}, {r}))")


def cones(n: int, seed: int) -> list[str]:
    ra, dec = sky(np.random.default_rng(seed), n)
    return [QUERY.format(ra=f"{a:.6f}", dec=f"{d:.6f}", r=RADIUS) for a, d in zip(ra, dec,
                                                                                    strict=True)]


def client(args: tuple[str, int, list[str], float]) -> tuple[list[float], list[bytes], float]:
    """One client process: the queries in order on one keep-alive connection, started at
    `start` (so that every client begins together); latencies (ms), bodies (read by the
    parent afterwards: parsing here would compete with the measurement), end time."""
    host, port, queries, start = args
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.connect()
    while time.time() < start:
        time.sleep(0.001)
    times, bodies = [], []
    for q in queries:
        ms, status, body = sync_get(conn, q)
        assert status == 200, body[:300]
        times.append(ms)
        bodies.append(body)
    end = time.time()
    conn.close()
    return times, bodies, end


def paired_client(pipe: Any, host: str, port: int) -> None:
    """A client process driven one query at a time: each query received on `pipe` is sent on
    one keep-alive connection, and its latency (ms), status and body are sent back."""
    conn = http.client.HTTPConnection(host, port, timeout=60)
    conn.connect()
    while (q := pipe.recv()) is not None:
        pipe.send(sync_get(conn, q))
    conn.close()


def sync_get(conn: http.client.HTTPConnection, query: str) -> tuple[float, int, bytes]:
    """`GET /sync` of `query` on `conn`: latency (ms), status and body."""
    path = "/sync?" + urllib.parse.urlencode({"REQUEST": "doQuery", "LANG": "ADQL",
                                               "QUERY": query})
    t0 = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    return (time.perf_counter() - t0) * 1000, response.status, body


def rows_in(body: bytes) -> int:
    return len(parse_single_table(io.BytesIO(body)).array)


def run_clients(pool: Any, host: str, port: int, batches: list[list[str]]
                ) -> tuple[float, list[list[float]], list[list[bytes]]]:
    """Elapsed seconds, each client's latencies and bodies (parse them with `counts` after
    reading the service's CPU time: astropy's parse costs more than the query)."""
    start = time.time() + 0.3
    results = pool.map(client, [(host, port, b, start) for b in batches], chunksize=1)
    elapsed = max(end for _, _, end in results) - start
    return elapsed, [t for t, _, _ in results], [c for _, c, _ in results]


def counts(bodies: list[list[bytes]]) -> list[list[int]]:
    return [[rows_in(b) for b in c] for c in bodies]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=800,
                        help="queries per measurement (fewer: the 8 clients' start and end "
                             "skew weighs more in their short blocks)")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--threads", type=int, default=ServeConfig.threads,
                        help="DuckDB threads (default: what `mirror serve` uses, [serve] "
                             "threads; 2 is one per core here, as bench/cone.py)")
    parser.add_argument("--max-queries", type=int, default=ServeConfig.max_queries,
                        help="queries the service runs at once (default: what `mirror serve` "
                             "uses, [serve] max_queries; more clients wait for a runner)")
    args = parser.parse_args()
    engine.DUCKDB_CONFIG["threads"] = args.threads
    folder = Path(tempfile.mkdtemp(prefix="mirror-serve-"))
    try:
        measure(args, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def measure(args: argparse.Namespace, folder: Path) -> None:
    from mirror.query import Runner
    from mirror.server.context import ServiceContext
    from mirror.server.service import LocalService

    path = folder / "serve.duckdb"
    cat = Catalogue.open(path)
    t0 = time.perf_counter()
    build(cat, args.rows, args.seed)
    print(f"built {args.rows:,} rows in {time.perf_counter() - t0:.1f} s")
    config = Config(catalogue_path=path, store_root=folder / "store",
                    query=QueryConfig(timeout=60, maxrec=100_000),
                    serve=ServeConfig(max_queries=args.max_queries, queue_seconds=30))
    queries = cones(args.queries, args.seed + 1)

    runner = Runner(cat, timeout=60, maxrec=100_000)
    for q in queries[:20]:  # warm the catalogue's pages and the runner's table list
        runner.query(q)
    ctx = ServiceContext(cat, config)
    service = LocalService(ctx, "127.0.0.1", 0)
    url = urllib.parse.urlsplit(service.start())
    host, port = url.hostname or "127.0.0.1", url.port or 0
    spawn = mp.get_context("spawn")
    pool = spawn.Pool(args.clients)
    pipe, far = spawn.Pipe()
    paired = spawn.Process(target=paired_client, args=(far, host, port), daemon=True)
    paired.start()

    def through_service(q: str) -> tuple[float, Any]:
        """Latency and body: parsed after the round, not between the pair's two calls."""
        pipe.send(q)
        ms, status, body = pipe.recv()
        assert status == 200, body[:300]
        return ms, body

    def direct_call(q: str) -> tuple[float, Any]:
        t0 = time.perf_counter()
        rows = len(runner.query(q))
        return (time.perf_counter() - t0) * 1000, rows

    direct: list[float] = []
    service_ms: list[float] = []
    one_s = many_s = 0.0
    expected: list[int] = []
    cpu = [0.0, 0.0]  # the service process's CPU seconds (its threads, DuckDB's included)
    try:
        run_clients(pool, host, port, [queries[:20]] * args.clients)  # warm every runner
        for q in queries[:20]:
            through_service(q)
        # rounds interleave the three measurements: a shared machine's load drifts alike
        for part in (queries[i::args.rounds] for i in range(args.rounds)):
            rows, answered = [], []
            for i, q in enumerate(part):  # pairs: which call goes first alternates
                if i % 2:
                    (d_ms, n), (s_ms, body) = direct_call(q), through_service(q)
                else:
                    (s_ms, body), (d_ms, n) = through_service(q), direct_call(q)
                direct.append(d_ms)
                service_ms.append(s_ms)
                rows.append(n)
                answered.append(body)
            assert [rows_in(b) for b in answered] == rows, \
                "the service answered other rows than the ADQL layer"
            expected += rows
            cpu0 = time.process_time()
            seconds, _, bodies = run_clients(pool, host, port, [part])
            cpu[0] += time.process_time() - cpu0
            [got] = counts(bodies)
            assert got == rows, "the service answered other rows than the ADQL layer"
            one_s += seconds
            per = [part[i::args.clients] for i in range(args.clients)]
            cpu0 = time.process_time()
            seconds, _, bodies = run_clients(pool, host, port, per)
            cpu[1] += time.process_time() - cpu0
            for i, got in enumerate(counts(bodies)):
                assert got == rows[i::args.clients], "a concurrent client got other rows"
            many_s += seconds
    finally:
        pipe.send(None)
        paired.join(10)
        pool.close()
        service.stop()
        ctx.close()
        runner.close()
        cat.close()

    direct_ms, one_ms = statistics.median(direct), statistics.median(service_ms)
    overhead = one_ms - direct_ms
    pair_ms = statistics.median(s - d for s, d in zip(service_ms, direct, strict=True))
    qps_direct = len(queries) / (sum(direct) / 1000)
    qps_one, qps_many = len(queries) / one_s, len(queries) / many_s
    scaling = qps_many / qps_one
    print(f"{len(queries)} cones of {RADIUS} deg, median {statistics.median(expected):.0f} rows "
          f"(max {max(expected)}), {args.max_queries} runners, DuckDB threads {args.threads}, "
          f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.1f}")
    print(f"direct Runner.query     median {direct_ms:7.2f} ms   {qps_direct:7.0f} q/s")
    print(f"service, 1 client       median {one_ms:7.2f} ms   {qps_one:7.0f} q/s (back to "
          "back)")
    print(f"service, {args.clients} clients                         {qps_many:7.0f} q/s")
    print(f"service process CPU per query: {cpu[0] / len(queries) * 1000:.2f} ms with 1 client "
          f"({cpu[0] / one_s:.2f} cores busy), {cpu[1] / len(queries) * 1000:.2f} ms with "
          f"{args.clients} ({cpu[1] / many_s:.2f} cores busy)")
    print(f"overhead per query  {overhead:5.2f} ms  (target < {TARGETS['overhead_ms']} ms: "
          f"{'met' if overhead < TARGETS['overhead_ms'] else 'MISSED'}; median of the "
          f"pairs' differences {pair_ms:.2f} ms)")
    print(f"{args.clients} clients / 1 client  {scaling:5.2f}x  (target >= {TARGETS['scaling']}x: "
          f"{'met' if scaling >= TARGETS['scaling'] else 'MISSED'})")


if __name__ == "__main__":
    main()
