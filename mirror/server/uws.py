"""The async TAP endpoint as UWS 1.1 resources: `/async`, `/async/{id}` and its children."""

from __future__ import annotations

import datetime as dt
from xml.sax.saxutils import escape, quoteattr

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route

from mirror.errors import MirrorError
from mirror.server.jobs import Job, JobNotFound, JobStore
from mirror.server.params import BadRequest, read_params
from mirror.server.tap import error_response
from mirror.server.votable import error_document, xml_text

NS = ('xmlns:uws="http://www.ivoa.net/xml/UWS/v1.0" xmlns:xlink="http://www.w3.org/1999/xlink" '
      'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"')
MAX_WAIT = 60.0
XML = "text/xml"


def routes(store: JobStore) -> list[Route]:
    """The UWS routes over `store`; every error is a DALI error document with its status."""
    ctx = store.ctx

    def guarded(handler):  # noqa: ANN001, ANN202 (starlette endpoints)
        async def endpoint(request: Request) -> Response:
            try:
                return await handler(request)
            except MirrorError as exc:
                return error_response(exc, ctx, getattr(exc, "status", None) or 400)
        return endpoint

    async def job_list(request: Request) -> Response:
        params = await read_params(request)
        if request.method == "POST":
            job = store.create(params, owner=None)
            if params.get("phase", "").upper() == "RUN":
                store.start(job)
            return RedirectResponse(_url(request, job.id), status_code=303)
        return Response(_jobs_xml(store.jobs(), request), media_type=XML)

    async def job(request: Request) -> Response:
        job = store.get(request.path_params["id"])
        if request.method == "DELETE":
            store.delete(job)
            return RedirectResponse(_url(request), status_code=303)
        params = await read_params(request)
        if request.method == "POST":
            if params.get("action", "").upper() == "DELETE":
                store.delete(job)
                return RedirectResponse(_url(request), status_code=303)
            store.update(job, params)
            if params.get("phase", "").upper() == "RUN":
                store.start(job)
            return RedirectResponse(_url(request, job.id), status_code=303)
        if "wait" in params:
            await store.wait(job, _wait_seconds(params["wait"]),
                             params.get("phase", "").upper() or None)
        return Response(job_xml(job, request), media_type=XML)

    async def phase(request: Request) -> Response:
        job = store.get(request.path_params["id"])
        if request.method == "POST":
            value = (await read_params(request)).get("phase", "").upper()
            if value == "RUN":
                store.start(job)
            elif value == "ABORT":
                store.abort(job)
            else:
                raise BadRequest(f"PHASE={value!r} cannot be posted", "give PHASE=RUN or ABORT")
            return RedirectResponse(_url(request, job.id), status_code=303)
        return PlainTextResponse(job.phase)

    async def duration(request: Request) -> Response:
        job = store.get(request.path_params["id"])
        if request.method == "POST":
            text = (await read_params(request)).get("executionduration", "")
            if not text.strip().isdigit():
                raise BadRequest(f"EXECUTIONDURATION={text!r} is not a whole number of "
                                 "seconds", f"give 0 < N <= {store.max_duration}")
            store.set_duration(job, int(text))
            return RedirectResponse(_url(request, job.id), status_code=303)
        return PlainTextResponse(str(job.duration))

    async def destruction(request: Request) -> Response:
        job = store.get(request.path_params["id"])
        if request.method == "POST":
            text = (await read_params(request)).get("destruction", "")
            try:
                when = dt.datetime.fromisoformat(text.strip())
            except ValueError:
                raise BadRequest(f"DESTRUCTION={text!r} is not an ISO 8601 time",
                                 "e.g. DESTRUCTION=2030-01-01T00:00:00Z") from None
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            store.set_destruction(job, when)
            return RedirectResponse(_url(request, job.id), status_code=303)
        return PlainTextResponse(job.destruction)

    async def simple(request: Request) -> Response:
        job = store.get(request.path_params["id"])
        what = request.url.path.rstrip("/").rsplit("/", 1)[-1]
        if what == "quote":
            return PlainTextResponse("")  # no estimate: UWS lets a quote be nil
        if what == "owner":
            return PlainTextResponse(job.owner or "")
        if what == "parameters":
            if request.method == "POST":
                store.update(job, await read_params(request))
                return RedirectResponse(_url(request, job.id), status_code=303)
            return Response(_wrap("parameters", _params_xml(job)), media_type=XML)
        if what == "results":
            return Response(_wrap("results", _results_xml(job, request)), media_type=XML)
        if what == "error":
            if job.phase != "ERROR" or not job.error:
                raise JobNotFound(f"job {job.id} has no error (it is {job.phase})")
            return Response(error_document(job.error), media_type="application/x-votable+xml")
        raise JobNotFound(f"no resource {what!r} for job {job.id}")

    async def result(request: Request) -> Response:
        job = store.get(request.path_params["id"])
        path = store.result_path(job)
        if job.phase != "COMPLETED" or not path.is_file():
            raise JobNotFound(f"job {job.id} has no result (it is {job.phase})",
                              "wait until its phase is COMPLETED")
        return FileResponse(path, media_type=job.result_mime)

    both = ["GET", "POST"]
    return [
        Route("/async", guarded(job_list), methods=both),
        Route("/async/{id}", guarded(job), methods=[*both, "DELETE"]),
        Route("/async/{id}/phase", guarded(phase), methods=both),
        Route("/async/{id}/executionduration", guarded(duration), methods=both),
        Route("/async/{id}/destruction", guarded(destruction), methods=both),
        Route("/async/{id}/results/result", guarded(result)),
        *(Route(f"/async/{{id}}/{name}", guarded(simple), methods=both)
          for name in ("quote", "owner", "parameters", "results", "error")),
    ]


def _wait_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadRequest(f"WAIT={text!r} is not a number of seconds",
                         f"give WAIT=N (at most {MAX_WAIT:g}; -1 waits the most)") from None
    return MAX_WAIT if value < 0 else min(value, MAX_WAIT)


def _url(request: Request, *parts: str) -> str:
    """A job URL under the service's public base ([serve] public_url behind a proxy)."""
    return "/".join([request.app.state.ctx.link_base(request) + "/async", *parts])


def _time(value: str | None, tag: str) -> str:
    return (f"<uws:{tag}>{value}</uws:{tag}>" if value
            else f'<uws:{tag} xsi:nil="true"/>')


def job_xml(job: Job, request: Request) -> str:
    """The UWS 1.1 job document."""
    parts = [f"<uws:jobId>{job.id}</uws:jobId>"]
    if job.run_id:
        parts.append(f"<uws:runId>{escape(xml_text(job.run_id))}</uws:runId>")
    parts += [_time(job.owner and escape(job.owner), "ownerId"),
              f"<uws:phase>{job.phase}</uws:phase>",
              _time(None, "quote"),
              _time(job.created, "creationTime"), _time(job.started, "startTime"),
              _time(job.ended, "endTime"),
              f"<uws:executionDuration>{job.duration}</uws:executionDuration>",
              _time(job.destruction, "destruction"),
              _wrap("parameters", _params_xml(job), ns=False),
              _wrap("results", _results_xml(job, request), ns=False)]
    if job.phase == "ERROR" and job.error:
        parts.append('<uws:errorSummary type="fatal" hasDetail="true">'
                     f"<uws:message>{escape(xml_text(job.error))}</uws:message></uws:errorSummary>")
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<uws:job {NS} version="1.1">'
            + "".join(parts) + "</uws:job>")


def _params_xml(job: Job) -> str:
    return "".join(f"<uws:parameter id={quoteattr(xml_text(k))}>{escape(xml_text(v))}"
                   "</uws:parameter>"
                   for k, v in job.params.items())


def _results_xml(job: Job, request: Request) -> str:
    if job.phase != "COMPLETED":
        return ""
    href = _url(request, job.id, "results", "result")
    return f'<uws:result id="result" xlink:href={quoteattr(href)}/>'


def _wrap(tag: str, inner: str, *, ns: bool = True) -> str:
    if not ns:
        return f"<uws:{tag}>{inner}</uws:{tag}>"
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<uws:{tag} {NS}>{inner}</uws:{tag}>')


def _jobs_xml(jobs: list[Job], request: Request) -> str:
    wanted = {p.upper() for k, p in request.query_params.multi_items() if k.lower() == "phase"}
    after = next((v for k, v in request.query_params.multi_items() if k.lower() == "after"), "")
    last = next((v for k, v in request.query_params.multi_items() if k.lower() == "last"), "")
    picked = [j for j in jobs if (j.phase in wanted if wanted else j.phase != "ARCHIVED")
              and (not after or j.created > after)]
    if last.isdigit():
        picked = sorted(picked, key=lambda j: j.created, reverse=True)[:int(last)]
    refs = "".join(
        f'<uws:jobref id="{j.id}" xlink:href={quoteattr(_url(request, j.id))}>'
        f"<uws:phase>{j.phase}</uws:phase>"
        + (f"<uws:runId>{escape(xml_text(j.run_id))}</uws:runId>" if j.run_id else "")
        + _time(j.owner and escape(j.owner), "ownerId")
        + f"<uws:creationTime>{j.created}</uws:creationTime></uws:jobref>" for j in picked)
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<uws:jobs {NS} version="1.1">'
            + refs + "</uws:jobs>")
