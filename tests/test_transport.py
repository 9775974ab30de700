"""The download engine against a fault-injecting local server (tests/fakes/faultserver.py)."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from email.utils import formatdate
from pathlib import Path

import pytest
from fakes.faultserver import LAST_MODIFIED, FaultServer, Step

from mirror.fetch import _sealer
from mirror.fetch.transport import Download, Outcome, Transport

DATA = os.urandom(300_000)
SHA = hashlib.sha256(DATA).hexdigest()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture()
def srv() -> Iterator[FaultServer]:
    with FaultServer() as server:
        yield server


@pytest.fixture()
def transport() -> Iterator[Transport]:
    t = Transport(concurrency=8, per_host=8, low_speed_time=1, connect_timeout=5)
    yield t
    t.close()


def fetch(t: Transport, *jobs: Download) -> list[Outcome]:
    return list(t.run(jobs))


def one(t: Transport, url: str, dest: Path, **kw: object) -> Outcome:
    [out] = fetch(t, Download("k", url, dest, **kw))  # type: ignore[arg-type]
    return out


def test_a_normal_file_arrives_whole_with_its_hash_and_headers(srv, transport, tmp_path):
    srv.files["/f"] = DATA
    url = srv.script("/f", Step("serve"))
    out = one(transport, url, tmp_path / "f")
    assert (out.key, out.url, out.status, out.error, out.transient) == ("k", url, 200, None, False)
    assert (tmp_path / "f").read_bytes() == DATA
    assert (out.size, out.expected_size, out.sha256) == (len(DATA), len(DATA), SHA)
    assert out.head == DATA[:64]  # read back as stored: the fetcher's check needs no open
    assert out.headers["last-modified"] == LAST_MODIFIED
    assert out.headers["content-type"] == "application/octet-stream"
    assert out.restarted is False and out.seconds > 0


def test_an_empty_file_is_created(srv, transport, tmp_path):
    srv.files["/empty"] = b""
    out = one(transport, srv.url + "/empty", tmp_path / "e")
    assert out.error is None and out.size == 0 and out.sha256 == sha(b"") and out.head == b""
    assert (tmp_path / "e").read_bytes() == b""


def test_a_500_is_transient_and_leaves_dest_alone_then_the_retry_succeeds(srv, transport,
                                                                          tmp_path):
    srv.files["/f"] = DATA
    url = srv.script("/f", Step("status", status=500, body=b"database on fire"), Step("serve"))
    first = one(transport, url, tmp_path / "f")
    assert (first.status, first.error, first.transient) == (500, "HTTP 500", True)
    assert first.sha256 is None and first.expected_size is None
    assert first.error_body == b"database on fire"
    assert not (tmp_path / "f").exists()  # the error body went nowhere near dest
    second = one(transport, url, tmp_path / "f")
    assert second.error is None and second.sha256 == SHA


def test_an_error_answer_does_not_touch_a_partial_file(srv, transport, tmp_path):
    srv.files["/f"] = DATA
    url = srv.script("/f", Step("status", status=503, body=b"x" * 5000))
    (tmp_path / "f").write_bytes(DATA[:1000])
    out = one(transport, url, tmp_path / "f", resume_from=1000, validator=LAST_MODIFIED)
    assert out.status == 503 and out.transient and out.size == 1000
    assert (tmp_path / "f").read_bytes() == DATA[:1000]


def test_a_404_is_permanent(srv, transport, tmp_path):
    out = one(transport, srv.url + "/missing", tmp_path / "m")
    assert (out.status, out.error, out.transient, out.retry_after) == (404, "HTTP 404", False,
                                                                       None)
    assert not (tmp_path / "m").exists()


def test_429_gives_retry_after_in_seconds(srv, transport, tmp_path):
    url = srv.script("/r", Step("status", status=429, headers={"Retry-After": "7"}))
    out = one(transport, url, tmp_path / "r")
    assert (out.status, out.transient, out.retry_after) == (429, True, 7.0)
    assert out.headers["retry-after"] == "7"


def test_retry_after_as_an_http_date(srv, transport, tmp_path):
    when = formatdate(time.time() + 120, usegmt=True)
    url = srv.script("/r", Step("status", status=503, headers={"Retry-After": when}))
    out = one(transport, url, tmp_path / "r")
    assert out.transient and out.retry_after is not None and 100 < out.retry_after <= 121


@pytest.mark.parametrize("action", ["reset", "truncate"])
def test_a_body_cut_short_is_transient_keeps_the_partial_and_resumes(srv, transport, tmp_path,
                                                                     action):
    srv.files["/f"] = DATA
    url = srv.script("/f", Step(action, cut=100_000), Step("serve"))
    dest = tmp_path / "f"
    first = one(transport, url, dest)
    assert first.error is not None and first.transient, first
    assert first.status == 200 and first.expected_size == len(DATA)
    kept = dest.read_bytes()
    assert first.size == len(kept) <= 100_000 and kept == DATA[:len(kept)]
    assert first.sha256 == sha(kept)
    if action == "truncate":  # a clean close delivers everything sent before it
        assert len(kept) == 100_000 and first.curl_code == 18
    second = one(transport, url, dest, resume_from=len(kept),
                 validator=first.headers["last-modified"])
    assert (second.status, second.error, second.restarted) == (206 if kept else 200, None,
                                                               False)
    assert dest.read_bytes() == DATA and second.sha256 == SHA and second.size == len(DATA)
    if kept:
        sent = srv.requests("/f")[-1].headers
        assert sent["range"] == f"bytes={len(kept)}-" and sent["if-range"] == LAST_MODIFIED


def test_a_stalled_body_times_out_as_transient(srv, transport, tmp_path):
    srv.files["/s"] = DATA
    url = srv.script("/s", Step("stall", cut=0, delay=20))  # headers, then silence
    started = time.monotonic()
    out = one(transport, url, tmp_path / "s")
    assert time.monotonic() - started < 5
    assert out.transient and out.curl_code == 28 and "curl 28" in (out.error or "")
    assert (tmp_path / "s").read_bytes() == b"" and out.size == 0


def test_an_html_page_with_200_is_returned_as_it_is(srv, transport, tmp_path):
    page = b"<html><body>Please log in</body></html>"
    srv.files["/p"] = page
    url = srv.script("/p", Step("serve", content_type="text/html; charset=utf-8"))
    out = one(transport, url, tmp_path / "p")
    assert out.error is None and out.status == 200 and out.sha256 == sha(page)
    assert out.headers["content-type"].startswith("text/html")
    assert (tmp_path / "p").read_bytes() == page


def test_a_resume_gets_206_and_hashes_the_whole_file(srv, transport, tmp_path):
    srv.files["/f"] = DATA
    dest = tmp_path / "f"
    dest.write_bytes(DATA[:123_456] + b"junk beyond the offset")
    out = one(transport, srv.url + "/f", dest, resume_from=123_456, validator=LAST_MODIFIED)
    assert (out.status, out.error, out.restarted) == (206, None, False)
    assert dest.read_bytes() == DATA
    assert (out.size, out.expected_size, out.sha256) == (len(DATA), len(DATA), SHA)


def test_a_206_shorter_than_the_file_is_a_transient_truncation(srv, transport, tmp_path):
    srv.files["/f"] = DATA
    url = srv.script("/f", Step("serve", range_limit=1000), Step("serve"))
    dest = tmp_path / "f"
    dest.write_bytes(DATA[:5000])
    first = one(transport, url, dest, resume_from=5000, validator=LAST_MODIFIED)
    assert first.status == 206 and first.transient and first.curl_code == 0
    assert first.error == f"truncated: 6000 of {len(DATA)} bytes"
    assert first.size == 6000 and dest.read_bytes() == DATA[:6000]
    second = one(transport, url, dest, resume_from=6000, validator=LAST_MODIFIED)
    assert second.error is None and second.sha256 == SHA


def test_the_sealer_fsyncs_every_ended_file_unless_switched_off(tmp_path, monkeypatch):
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)  # the sealer process runs this code
    for fsync, expected in ((True, 3), (False, 0)):
        synced.clear()
        sealer = _sealer.Sealer(fsync)
        answers: list[str] = []
        monkeypatch.setattr(sealer, "answer", answers.append)
        for i in range(3):
            path = tmp_path / f"{fsync}{i}"
            path.write_bytes(DATA[:1000 * (i + 1)])
            sealer.handle("O", str(i), [os.fsencode(path).hex()])
            sealer.handle("E", str(i), [])
        assert len(synced) == expected
        assert answers == [f"{i}\t{1000 * (i + 1)}\t{sha(DATA[:1000 * (i + 1)])}\t"
                           f"{DATA[:_sealer.HEAD].hex()}\t" for i in range(3)]


def test_a_big_backlog_is_hashed_on_a_thread_and_answered_before_a_barrier(tmp_path):
    """At the end of a run of big files the sealer is often far behind: such a file is
    finished on a thread beside the others, with the same answer, and a barrier waits for it."""
    sealer = _sealer.Sealer(fsync=True)
    answers: list[str] = []
    sealer.answer = answers.append  # type: ignore[method-assign]
    big = os.urandom(_sealer.BIG_END + 12_345)
    files = {}
    for i in range(3):
        path = tmp_path / f"big{i}"
        path.write_bytes(b"")
        sealer.handle("O", str(i), [os.fsencode(path).hex()])
        files[str(i)] = path
    for i, path in files.items():
        path.write_bytes(big[int(i):])  # written whole before the sealer caught up at all
        sealer.handle("E", i, [])
    assert sealer.pool is not None  # the backlogs went to threads
    sealer.handle("P", "9", [])
    assert sealer.pool is None  # the barrier waited for the threads and ended them
    assert answers[-1] == "P\t9\t-\t\t"
    assert sorted(answers[:-1]) == sorted(
        f"{i}\t{len(big) - int(i)}\t{sha(big[int(i):])}\t{big[int(i):][:_sealer.HEAD].hex()}\t"
        for i in files)


def test_authorization_values_are_never_logged(srv, transport, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    srv.files["/f"] = DATA
    url = srv.script("/f", Step("serve", ranges=False))
    (tmp_path / "f").write_bytes(DATA[:10])
    out = one(transport, url, tmp_path / "f", resume_from=10, validator="Mon, 01 Jan 2001 "
              "00:00:00 GMT", headers={"Authorization": "Bearer s3cret"})
    assert out.error is None and out.restarted
    assert "s3cret" not in caplog.text


def test_a_server_that_ignores_range_makes_a_restart_from_zero(srv, transport, tmp_path):
    srv.files["/f"] = DATA
    url = srv.script("/f", Step("serve", ranges=False))
    dest = tmp_path / "f"
    dest.write_bytes(b"x" * 50_000)  # not even the right prefix: must not survive
    out = one(transport, url, dest, resume_from=50_000, validator=LAST_MODIFIED)
    assert (out.status, out.error, out.restarted) == (200, None, True)
    assert dest.read_bytes() == DATA and out.sha256 == SHA


@pytest.mark.parametrize("if_range", [True, False], ids=["server-checks", "client-checks"])
def test_a_changed_last_modified_makes_a_restart_from_zero(srv, transport, tmp_path, if_range):
    new = DATA[::-1]
    srv.files["/f"] = new
    url = srv.script("/f", Step("serve", if_range=if_range,
                                last_modified="Thu, 01 Jan 2026 00:00:00 GMT"))
    dest = tmp_path / "f"
    dest.write_bytes(DATA[:100_000])
    out = one(transport, url, dest, resume_from=100_000, validator=LAST_MODIFIED)
    assert (out.status, out.error, out.restarted) == (200, None, True)
    assert dest.read_bytes() == new and out.sha256 == sha(new)
    sent = [r.headers.get("range") for r in srv.requests("/f")]
    assert sent == (["bytes=100000-"] if if_range else ["bytes=100000-", None])


def test_416_on_a_resume_restarts_from_zero(srv, transport, tmp_path):
    srv.files["/f"] = DATA
    dest = tmp_path / "f"
    dest.write_bytes(DATA + b"more than the server has")
    out = one(transport, srv.url + "/f", dest, resume_from=len(DATA) + 10)
    assert (out.status, out.error, out.restarted) == (200, None, True)
    assert dest.read_bytes() == DATA and out.sha256 == SHA


def test_a_partial_file_shorter_than_resume_from_is_downloaded_again(srv, transport, tmp_path):
    srv.files["/f"] = DATA
    out = one(transport, srv.url + "/f", tmp_path / "absent", resume_from=5000)
    assert out.error is None and out.restarted and out.sha256 == SHA
    assert "range" not in srv.requests("/f")[0].headers


def test_many_files_concurrently_each_with_the_right_hash(srv, tmp_path):
    sizes = [0, 1, 16_383, 16_384, 65_537, 1_000_000] + [i * 7919 % 250_000 for i in range(94)]
    blobs = {f"/f{i}": os.urandom(n) for i, n in enumerate(sizes)}
    srv.files.update(blobs)
    t = Transport(concurrency=6, per_host=6)
    try:
        outs = list(t.run(Download(p, srv.url + p, tmp_path / p[1:]) for p in blobs))
    finally:
        t.close()
    assert sorted(o.key for o in outs) == sorted(blobs)  # type: ignore[type-var]
    for o in outs:
        assert o.error is None, o
        assert o.sha256 == sha(blobs[o.key]) and o.size == len(blobs[o.key])  # type: ignore[index]
        assert (tmp_path / o.key[1:]).read_bytes() == blobs[o.key]  # type: ignore[index]
    ports = {r.port for r in srv.received}
    assert len(ports) <= 6  # keep-alive: 100 files over at most 6 connections


def test_per_host_caps_simultaneous_requests_and_jobs_are_pulled_lazily(srv, tmp_path):
    for i in range(12):
        srv.files[f"/d{i}"] = b"slow"
        srv.script(f"/d{i}", Step("serve", delay=0.1))
    pulled: list[int] = []
    pulled_at_first_outcome: list[int] = []

    def jobs() -> Iterator[Download]:
        for i in range(12):
            pulled.append(i)
            yield Download(i, f"{srv.url}/d{i}", tmp_path / f"d{i}")

    t = Transport(concurrency=4, per_host=2)
    try:
        outs = []
        for o in t.run(jobs()):
            pulled_at_first_outcome = pulled_at_first_outcome or [len(pulled)]
            outs.append(o)
    finally:
        t.close()
    assert all(o.error is None for o in outs) and len(outs) == 12
    assert srv.peak == 2
    # lazily: the first 4, then one more for each of the (at most 2) transfers that just ended
    assert pulled_at_first_outcome[0] <= 6


def test_redirects_are_followed_and_authorization_stays_with_its_host(srv, transport,
                                                                       tmp_path):
    with FaultServer() as other:
        other.files["/real"] = DATA
        srv.script("/go", Step("redirect", location=other.url + "/real"))
        out = one(transport, srv.url + "/go", tmp_path / "f",
                  headers={"Authorization": "Bearer s3cret"})
        assert out.error is None and out.status == 200 and out.sha256 == SHA
        assert out.headers["etag"]  # the final response's headers, not the redirect's
        assert srv.requests("/go")[0].headers["authorization"] == "Bearer s3cret"
        assert "authorization" not in other.requests("/real")[0].headers


def test_a_redirect_loop_stops_after_five(srv, transport, tmp_path):
    srv.script("/loop", Step("redirect", location=srv.url + "/loop"))
    out = one(transport, srv.url + "/loop", tmp_path / "l")
    assert out.error is not None and out.curl_code == 47 and not out.transient
    assert len(srv.requests("/loop")) == 6
    assert not (tmp_path / "l").exists()


def test_connection_refused_is_transient(transport, tmp_path):
    with FaultServer() as gone:
        url = gone.url + "/f"
    out = one(transport, url, tmp_path / "f")
    assert out.status is None and out.transient and out.curl_code == 7


def test_an_unwritable_dest_is_a_permanent_error(srv, transport, tmp_path):
    srv.files["/f"] = DATA
    out = one(transport, srv.url + "/f", tmp_path / "no" / "such" / "dir" / "f")
    assert out.error is not None and "cannot write" in out.error and not out.transient


def test_stopping_early_leaves_the_transport_usable(srv, transport, tmp_path):
    for i in range(10):
        srv.files[f"/f{i}"] = DATA
    jobs = [Download(i, f"{srv.url}/f{i}", tmp_path / f"f{i}") for i in range(10)]
    for _ in transport.run(jobs):
        break  # the consumer goes away: the other transfers are dropped
    out = one(transport, srv.url + "/f0", tmp_path / "again")
    assert out.error is None and out.sha256 == SHA


def test_without_fsync_files_are_still_complete(srv, tmp_path):
    srv.files["/f"] = DATA
    t = Transport(fsync=False)
    try:
        out = one(t, srv.url + "/f", tmp_path / "f")
    finally:
        t.close()
    assert t._sealer.args[-1] == "0"  # the sealer process was told not to fsync
    assert out.error is None and out.sha256 == SHA and (tmp_path / "f").read_bytes() == DATA


def test_bodies_are_written_by_libcurl_itself_not_a_python_callback(srv, transport, tmp_path):
    srv.files["/f"] = DATA
    assert one(transport, srv.url + "/f", tmp_path / "f").sha256 == SHA
    assert transport._idle and all(writer is not None for _, _, writer in transport._idle)


@pytest.mark.parametrize("buffer", [16 << 10, 1 << 20])  # fails inside fwrite / at the flush
def test_a_write_error_mid_body_is_permanent(srv, tmp_path, buffer):
    import resource
    import signal

    srv.files["/f"] = DATA
    t = Transport(chunk_hint=buffer)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    try:
        one(t, srv.url + "/f", tmp_path / "warm")  # the sealer starts without the limit
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, old_limit[1]))
        try:
            out = one(t, srv.url + "/f", tmp_path / "f")
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
            signal.signal(signal.SIGXFSZ, old_handler)
        assert out.error is not None and "cannot write" in out.error and not out.transient
        assert (tmp_path / "f").stat().st_size <= 100_000
        again = one(t, srv.url + "/f", tmp_path / "g")  # the pooled handle kept no stale bytes
        assert again.error is None and again.sha256 == SHA
    finally:
        t.close()


def test_a_forked_child_never_writes_the_parents_buffered_body_bytes(tmp_path):
    import ctypes

    import pycurl

    from mirror.fetch import _cwrite

    libc = ctypes.CDLL(None)
    curl = pycurl.Curl()
    devnull = os.open(os.devnull, os.O_WRONLY)
    writer = _cwrite.attach(curl, devnull, 1 << 20)
    assert writer is not None
    dest = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o644)
    os.dup2(dest, writer.fd)
    libc.fwrite(b"body", 1, 4, ctypes.c_void_p(writer.fp))  # as libcurl does: buffered
    pid = os.fork()
    if pid == 0:
        libc.exit(0)  # libc's exit flushes every stdio buffer the child has
    os.waitpid(pid, 0)
    assert writer.flush() is None
    assert (tmp_path / "f").read_bytes() == b"body"
    writer.close()
    curl.close()
    os.close(dest)
    os.close(devnull)


def test_a_sealer_that_dies_is_a_store_error_with_a_hint_not_a_crash(srv, transport, tmp_path):
    """The sealer gone mid-run (killed, or SIGBUS from a file truncated under its mapping):
    the run stops with a StoreError that says to run again, never a RuntimeError."""
    from mirror.errors import StoreError

    for i in range(6):
        srv.files[f"/f{i}"] = DATA
    urls = [srv.url + "/f0"] + [srv.script(f"/f{i}", Step("serve", delay=1.0))
                                for i in range(1, 6)]  # still in flight when the sealer dies
    jobs = [Download(i, url, tmp_path / f"f{i}") for i, url in enumerate(urls)]
    results = transport.run(jobs)
    first = next(results)
    assert first.error is None
    transport._sealer.kill()  # type: ignore[union-attr]
    transport._sealer.wait()  # type: ignore[union-attr]
    with pytest.raises(StoreError) as info:
        list(results)
    assert "sealer" in info.value.message and "signal 9" in info.value.message
    assert info.value.hint and "again" in info.value.hint


def test_the_sealer_ends_quietly_when_its_parent_is_gone(tmp_path):
    """After a kill -9 of the fetch nobody reads the sealer's answers: it ends without a
    traceback on the terminal they share."""
    path = tmp_path / "f"
    path.write_bytes(DATA)
    proc = subprocess.Popen([sys.executable, "-I", "-S", _sealer.__file__, "0"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stdin is not None
    proc.stdout.close()  # the parent's end of the answers, gone as with the parent
    proc.stdin.write(f"O\t1\t{os.fsencode(path).hex()}\nE\t1\n".encode())
    proc.stdin.close()
    assert proc.wait(timeout=10) == 0
    assert proc.stderr is not None and proc.stderr.read() == b""
