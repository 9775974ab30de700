"""UWS 1.1 jobs of the async TAP endpoint: kept as files beside the catalogue, run in worker
threads on the service's runners, destroyed when their time is up or the job cap is reached.

A job folder holds `job.json` (written atomically) and, once done, `result`. A service that
stops while a job runs finds it on restart and marks it ERROR: the client learns it must retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import re
import secrets
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from mirror.errors import MirrorError
from mirror.query import Runner
from mirror.server.context import ServiceContext
from mirror.server.execute import message, run
from mirror.server.params import BadRequest, tap_query
from mirror.server.pool import PoolBusyError

ACTIVE = ("QUEUED", "EXECUTING")
FINAL = ("COMPLETED", "ERROR", "ABORTED")
_ID = re.compile(r"^[0-9a-f]{16}$")
_CONTROL = ("phase", "runid", "action", "wait")
WAIT_POLL = 0.02  # seconds between looks at a waited-for job  # UWS parameters, not the job's own


class JobNotFound(MirrorError):
    """No job with this ID (HTTP 404)."""

    status = 404


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


@dataclass
class Job:
    """One async query: its UWS state, parameters and where its result is."""

    id: str
    created: str
    destruction: str
    duration: int
    params: dict[str, str] = field(default_factory=dict)
    phase: str = "PENDING"
    run_id: str | None = None
    owner: str | None = None
    started: str | None = None
    ended: str | None = None
    error: str | None = None
    result_mime: str | None = None
    overflow: bool = False


class JobStore:
    """The async jobs of one service: create, run, wait for, abort and destroy them."""

    def __init__(self, ctx: ServiceContext, folder: Path) -> None:
        self.ctx = ctx
        self.folder = folder
        self.limit = ctx.config.serve.max_jobs
        self.keep = dt.timedelta(hours=ctx.config.serve.job_hours)
        self.max_duration = int(ctx.runners.timeout)
        self._jobs: dict[str, Job] = {}
        self._running: dict[str, Runner] = {}
        self._changed = threading.Condition()
        self._pool = ThreadPoolExecutor(ctx.runners.size, thread_name_prefix="mirror-uws")
        self._load()

    # -- lifecycle --------------------------------------------------------------------------

    def create(self, params: dict[str, str], owner: str | None) -> Job:
        """A PENDING job with `params` (checked when it runs, as UWS lets a job fail)."""
        self.sweep()
        with self._changed:
            if len(self._jobs) >= self.limit:
                self._evict()
            created = now()
            job = Job(secrets.token_hex(8), _iso(created), _iso(created + self.keep),
                      self.max_duration, run_id=params.get("runid"), owner=owner,
                      params={k: v for k, v in params.items() if k not in _CONTROL})
            self._jobs[job.id] = job
            self._save(job)
        return job

    def get(self, job_id: str) -> Job:
        self.sweep()  # a job past its destruction time is gone, whichever request asks first
        job = self._jobs.get(job_id) if _ID.match(job_id) else None
        if job is None:
            raise JobNotFound(f"no job {job_id[:40]!r} here",
                              "list the jobs with GET /async; finished jobs are destroyed "
                              "after [serve] job_hours")
        return job

    def jobs(self) -> list[Job]:
        self.sweep()
        return sorted(self._jobs.values(), key=lambda j: j.created)

    def update(self, job: Job, params: dict[str, str]) -> None:
        """New parameter values for a job that has not started."""
        with self._changed:
            if job.phase != "PENDING":
                raise BadRequest(f"job {job.id} is {job.phase}; parameters can change only "
                                 "while it is PENDING", "create a new job")
            job.params.update({k: v for k, v in params.items() if k not in _CONTROL})
            if "runid" in params:
                job.run_id = params["runid"]
            self._save(job)

    def start(self, job: Job) -> None:
        """PHASE=RUN: queue a PENDING job for a worker thread."""
        with self._changed:
            if job.phase != "PENDING":
                return
            self._set(job, "QUEUED")
        self._pool.submit(self._execute, job)

    def abort(self, job: Job) -> None:
        with self._changed:
            if job.phase in FINAL:
                return
            running = job.id in self._running
            self._set(job, "ABORTED", ended=_iso(now()))
        if running:
            threading.Thread(target=self._interrupt, args=(job.id,), daemon=True).start()

    def _interrupt(self, job_id: str) -> None:
        """Interrupt the job's query until its runner is let go: an interrupt that lands while
        the query is still being translated is lost, so it is repeated."""
        while True:
            with self._changed:  # under the lock: the runner is still on this job's query
                runner = self._running.get(job_id)
                if runner is None:
                    return
                runner.con.interrupt()
            time.sleep(0.02)

    def delete(self, job: Job) -> None:
        self.abort(job)
        with self._changed:
            self._jobs.pop(job.id, None)
            shutil.rmtree(self.folder / job.id, ignore_errors=True)
            self._changed.notify_all()

    def set_duration(self, job: Job, seconds: int) -> None:
        with self._changed:
            job.duration = max(0, min(seconds, self.max_duration)) or self.max_duration
            self._save(job)

    def set_destruction(self, job: Job, when: dt.datetime) -> None:
        with self._changed:
            latest = dt.datetime.fromisoformat(job.created) + self.keep
            job.destruction = _iso(min(when, latest))
            self._save(job)

    async def wait(self, job: Job, seconds: float, phase: str | None) -> None:
        """UWS WAIT: return when the job leaves `phase` (its current phase if None, when that
        is PENDING, QUEUED or EXECUTING) or after `seconds`. Polls on the event loop: a
        waiting client holds no thread, so many waits cannot starve the queries."""
        watched = phase or job.phase
        if watched not in ("PENDING", *ACTIVE):
            return
        deadline = time.monotonic() + seconds
        while job.phase == watched and job.id in self._jobs and time.monotonic() < deadline:
            await asyncio.sleep(WAIT_POLL)

    def result_path(self, job: Job) -> Path:
        return self.folder / job.id / "result"

    def sweep(self) -> None:
        """Destroy jobs past their destruction time."""
        stamp = _iso(now())
        for job in [j for j in self._jobs.values() if j.destruction <= stamp]:
            self.delete(job)

    def close(self) -> None:
        for job in [j for j in self._jobs.values() if j.phase in ACTIVE]:
            self.abort(job)
        self._pool.shutdown(wait=False, cancel_futures=True)

    # -- the worker ---------------------------------------------------------------------------

    def _execute(self, job: Job) -> None:
        if job.phase != "QUEUED":
            return

        def started(runner: Runner | None) -> None:
            with self._changed:
                if runner is None:  # the query ended; the runner is about to serve others
                    self._running.pop(job.id, None)
                elif job.phase == "QUEUED":
                    self._running[job.id] = runner
                    self._set(job, "EXECUTING", started=_iso(now()))

        try:
            tq = tap_query(job.params, self.ctx.runners.maxrec)
            body, overflow = run(self.ctx, tq, timeout=job.duration or None,
                                 wait=job.duration or None, started=started)
        except PoolBusyError as exc:
            self._finish(job, "ERROR", error=message(exc, self.ctx))
        except MirrorError as exc:
            self._finish(job, "ERROR", error=message(exc, self.ctx))
        except Exception:  # noqa: BLE001 - a job must end; the message names no internals
            self._finish(job, "ERROR", error="the query failed inside the service; see its log")
            raise
        else:
            path = self.result_path(job)
            tmp = path.with_suffix(".part")
            tmp.write_bytes(body)
            os.replace(tmp, path)
            self._finish(job, "COMPLETED", mime=tq.format.mime, overflow=overflow)

    def _finish(self, job: Job, phase: str, *, error: str | None = None,
                mime: str | None = None, overflow: bool = False) -> None:
        with self._changed:
            self._running.pop(job.id, None)
            if job.phase in FINAL or job.id not in self._jobs:  # aborted or deleted meanwhile
                return
            job.error, job.result_mime, job.overflow = error, mime, overflow
            self._set(job, phase, ended=_iso(now()))

    # -- storage ------------------------------------------------------------------------------

    def _set(self, job: Job, phase: str, **stamps: str) -> None:
        for key, value in stamps.items():
            setattr(job, key, value)
        # saved before the phase shows: WAIT reads `job.phase` without the lock, and a client
        # that saw COMPLETED could find job.json (or its .part) still being written
        self._save(replace(job, phase=phase))
        job.phase = phase
        self._changed.notify_all()

    def _save(self, job: Job) -> None:
        folder = self.folder / job.id
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / "job.json.part"
        tmp.write_text(json.dumps(asdict(job)), encoding="utf-8")
        os.replace(tmp, folder / "job.json")

    def _load(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in self.folder.glob("*/job.json"):
            try:
                job = Job(**json.loads(path.read_text(encoding="utf-8")))
            except (OSError, ValueError, TypeError):
                shutil.rmtree(path.parent, ignore_errors=True)
                continue
            self._jobs[job.id] = job
            if job.phase in ACTIVE:
                job.error = "the service stopped while this job ran; submit it again"
                with self._changed:
                    self._set(job, "ERROR", ended=_iso(now()))
        self.sweep()

    def _evict(self) -> None:
        """Make room for one job: destroy the oldest finished one, or refuse."""
        done = sorted((j for j in self._jobs.values() if j.phase not in ACTIVE),
                      key=lambda j: j.created)
        if not done:
            raise PoolBusyError(f"{self.limit} async jobs are running or queued",
                                "wait for one to finish, or raise [serve] max_jobs")
        victim = done[0]
        self._jobs.pop(victim.id, None)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.folder / victim.id)


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
