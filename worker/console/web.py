"""The console's HTTP server: the web pages and the JSON API, one FastAPI app.

Reads (viewer) come from the read model (`worker.console.model`), except an instance's own
page, which reads that one instance and its history from the sidecar. Actions (operator) go
through `worker.console.actions`, i.e. the worker's own message line.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from fastapi import FastAPI, HTTPException, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.responses import StreamingResponse

from worker.actions import BULK_ACTIONS, BY_NAME
from worker.config import Settings
from worker.console import api
from worker.console.actions import (
    Actions,
    Job,
    Jobs,
    Outcome,
    eligible,
    older,
    valid_key,
)
from worker.console.auth import (
    SESSION_COOKIE,
    SESSION_SECONDS,
    Authenticator,
    Principal,
    csrf_ok,
    same_origin,
)
from worker.console.model import STATUSES, Entry, InstanceIndex
from worker.console.query import BadQuery, ListQuery, duration
from worker.events import TimelineEntry
from worker.gateway import InstanceState, WorkflowGateway
from worker.outcomes import Missing, Rejected, Transient
from worker.timeline import build_timeline

log = logging.getLogger(__name__)
audit = logging.getLogger("worker.audit")

HERE = Path(__file__).parent
_KEEPALIVE_SECONDS = 15.0
_STREAM_POLL_SECONDS = 0.2


@dataclass
class Context:
    """What the server needs of the running worker."""

    settings: Settings
    index: InstanceIndex
    actions: Actions
    jobs: Jobs
    auth: Authenticator
    gateway: WorkflowGateway
    workflows: Sequence[str]
    stopping: threading.Event
    acting: threading.Event | None = None


class _Redirect(Exception):
    def __init__(self, url: str, cookie: str | None = None) -> None:
        super().__init__(url)
        self.url = url
        self.cookie = cookie


def build_app(ctx: Context) -> FastAPI:
    app = FastAPI(
        title="dapr-workflow-worker console API",
        version="1",
        summary="Start, list, inspect and control the workflow instances this worker hosts.",
        description=api.API_DESCRIPTION,
        docs_url=None,  # FastAPI's interactive docs load scripts from a CDN: /api/docs instead
        redoc_url=None,
        openapi_url="/api/openapi.json",
        openapi_tags=api.TAGS,
    )
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters["json"] = lambda v: json.dumps(v, indent=2, sort_keys=True)
    templates.env.filters["when"] = _when
    templates.env.globals["statuses"] = STATUSES
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def custom_openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                summary=app.summary,
                description=app.description,
                routes=app.routes,
                tags=app.openapi_tags,
            )
            api.complete(document)
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = custom_openapi  # type: ignore[method-assign]

    # --- who is asking ----------------------------------------------------------------------

    def principal(request: Request) -> Principal | None:
        header = request.headers.get("authorization")
        if header is not None:
            user = ctx.auth.by_authorization(header)
            return Principal(user, "bearer") if user is not None else None
        return ctx.auth.from_cookie(request.cookies.get(SESSION_COOKIE))

    def reader(request: Request) -> Principal:
        found = principal(request)
        if found is None:
            raise HTTPException(
                401,
                "sign in: Authorization: Bearer <token>",
                headers={"WWW-Authenticate": 'Bearer realm="workflow console"'},
            )
        return found

    async def actor(request: Request) -> Principal:
        found = reader(request)
        if found.via == "session":
            if not same_origin(
                request.headers.get("origin"), request.url.scheme, request.headers.get("host")
            ):
                _refused(request, found, "cross-site request")
                raise HTTPException(403, "cross-site request refused")
            sent = request.headers.get("x-csrf-token")
            if sent is None and _is_form(request):
                form = await request.form()
                value = form.get("csrf_token")
                sent = value if isinstance(value, str) else None
            if not csrf_ok(found, sent):
                _refused(request, found, "missing or wrong CSRF token")
                raise HTTPException(403, "missing or wrong CSRF token: reload the page")
        if not found.user.can_act:
            _refused(request, found, "viewer")
            raise HTTPException(403, f"{found.user.name} is a viewer: viewers may not act")
        if ctx.stopping.is_set():
            raise HTTPException(503, "the worker is shutting down")
        if ctx.acting is not None and not ctx.acting.is_set():
            raise HTTPException(503, "the worker is starting", headers={"Retry-After": "2"})
        return found

    def page_reader(request: Request) -> Principal:
        token = request.query_params.get("token")
        if token is not None:
            user = ctx.auth.by_token(token)
            if user is None:
                raise _Redirect("/login?" + urlencode({"error": "that token is not valid"}))
            params = {k: v for k, v in request.query_params.items() if k != "token"}
            audit.info(json.dumps({"console": "sign-in", "user": user.name, "role": user.role}))
            target = request.url.path + (f"?{urlencode(params)}" if params else "")
            raise _Redirect(target, ctx.auth.session_cookie(user))
        found = principal(request)
        if found is None:
            raise _Redirect("/login?" + urlencode({"next": _local(str(request.url.path))}))
        return found

    def key_of(request: Request) -> str | None:
        key = request.headers.get("idempotency-key")
        if key is not None and not valid_key(key):
            raise HTTPException(
                400, "Idempotency-Key: 1-200 printable ASCII characters, without spaces"
            )
        return key

    @app.exception_handler(_Redirect)
    async def redirect(request: Request, exc: _Redirect) -> Response:
        response = RedirectResponse(exc.url, status_code=303)
        if exc.cookie is not None:
            _set_session(response, request, exc.cookie)
        return response

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        if request.url.path.startswith("/ui/") or request.headers.get("hx-request"):
            return HTMLResponse(
                templates.get_template("flash.html").render(ok=False, message=str(exc.detail)),
                status_code=exc.status_code,
                headers=exc.headers,
            )
        return JSONResponse({"detail": exc.detail}, exc.status_code, headers=exc.headers)

    # --- sign in and out --------------------------------------------------------------------

    @app.get("/login", include_in_schema=False)
    def login_page(request: Request, next: str = "/", error: str = "") -> Response:
        return templates.TemplateResponse(
            request, "login.html", {"next": _local(next), "error": error, "user": None}
        )

    @app.post("/login", include_in_schema=False)
    async def login(request: Request) -> Response:
        form = await request.form()
        token = form.get("token")
        target = _local(str(form.get("next") or "/"))
        user = ctx.auth.by_token(token if isinstance(token, str) else "")
        if user is None:
            log.warning("console: sign-in refused from %s", _client(request))
            return templates.TemplateResponse(
                request,
                "login.html",
                {"next": target, "error": "that token is not valid", "user": None},
                status_code=401,
            )
        audit.info(json.dumps({"console": "sign-in", "user": user.name, "role": user.role}))
        response = RedirectResponse(target, status_code=303)
        _set_session(response, request, ctx.auth.session_cookie(user))
        return response

    @app.post("/logout", include_in_schema=False)
    async def logout(request: Request) -> Response:
        found = principal(request)
        if found is not None and found.via == "session":
            sent = (await request.form()).get("csrf_token") if _is_form(request) else None
            if not csrf_ok(found, sent if isinstance(sent, str) else None):
                raise HTTPException(403, "missing or wrong CSRF token")
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    # --- the pages ----------------------------------------------------------------------------

    def list_context(request: Request, who: Principal) -> dict[str, Any]:
        error = ""
        try:
            query = ListQuery.parse(request.query_params)
        except BadQuery as bad:
            error, query = str(bad), ListQuery()
        page = ctx.index.query(
            query.filter(), query.sort, query.order == "desc", query.page, query.per_page
        )
        return {
            "user": who.user,
            "csrf": who.csrf,
            "query": query,
            "page": page,
            "error": error,
            "workflows": _workflow_names(ctx, page.items),
            "load": ctx.index.load,
        }

    @app.get("/", include_in_schema=False)
    def list_page(request: Request) -> Response:
        who = page_reader(request)
        values = list_context(request, who)
        status = 422 if values["error"] else 200
        return templates.TemplateResponse(request, "list.html", values, status_code=status)

    @app.get("/ui/instances", include_in_schema=False)
    def list_fragment(request: Request) -> Response:
        who = reader(request)
        return templates.TemplateResponse(request, "list_table.html", list_context(request, who))

    @app.get("/instances/{instance_id}", include_in_schema=False)
    def instance_page(request: Request, instance_id: str) -> Response:
        who = page_reader(request)
        values = instance_context(ctx, who, instance_id)
        return templates.TemplateResponse(
            request, "instance.html", values, status_code=values["status_code"]
        )

    @app.get("/ui/instances/{instance_id}", include_in_schema=False)
    def instance_fragment(request: Request, instance_id: str) -> Response:
        who = reader(request)
        values = instance_context(ctx, who, instance_id)
        return templates.TemplateResponse(request, "instance_body.html", values)

    @app.get("/start", include_in_schema=False)
    def start_page(request: Request) -> Response:
        who = page_reader(request)
        return templates.TemplateResponse(
            request,
            "start.html",
            {"user": who.user, "csrf": who.csrf, "workflows": list(ctx.workflows)},
        )

    @app.get("/api/docs", include_in_schema=False)
    def api_docs(request: Request) -> Response:
        who = page_reader(request)
        return templates.TemplateResponse(
            request,
            "api_docs.html",
            {"user": who.user, "csrf": who.csrf, "doc": app.openapi()},
        )

    # --- page actions (forms; answered with a fragment to show) ------------------------------

    def flash(outcome: Outcome, done: str) -> Response:
        ok = outcome.state in ("done", "pending")
        message = done if outcome.state == "done" else (outcome.reason or outcome.state)
        body = templates.get_template("flash.html").render(
            ok=ok, message=message, outcome=outcome.to_json()
        )
        return HTMLResponse(body, status_code=200 if ok else outcome.http_status)

    @app.post("/ui/start", include_in_schema=False)
    async def ui_start(request: Request) -> Response:
        who = await actor(request)
        form = await request.form()
        text = str(form.get("input") or "").strip()
        try:
            data = json.loads(text) if text else None
        except ValueError as error:
            return _flash_error(templates, f"input is not valid JSON: {error}", 422)
        body: dict[str, Any] = {"workflow": str(form.get("workflow") or "")}
        if str(form.get("instance_id") or "").strip():
            body["instance_id"] = str(form.get("instance_id")).strip()
        if data is not None:
            body["input"] = data
        if str(form.get("start_at") or "").strip():
            body["start_at"] = str(form.get("start_at")).strip()
        if form.get("replace"):
            body["replace"] = True
        outcome = await run_in_threadpool(
            ctx.actions.start, who.user.name, json.dumps(body).encode(), _form_key(form)
        )
        instance = outcome.instance_id or ""
        return flash(outcome, f"started {instance}" if instance else "started")

    @app.post("/ui/instances/{instance_id}/raise", include_in_schema=False)
    async def ui_raise(request: Request, instance_id: str) -> Response:
        who = await actor(request)
        form = await request.form()
        decision = str(form.get("decision") or "")
        body: dict[str, Any] = {"event_name": str(form.get("event_name") or "approval_decision")}
        if decision in ("approve", "reject"):
            body = {
                "event_name": "approval_decision",
                "data": {"approved": decision == "approve", "approver": who.user.name},
            }
        else:
            text = str(form.get("data") or "").strip()
            try:
                body["data"] = json.loads(text) if text else None
            except ValueError as error:
                return _flash_error(templates, f"data is not valid JSON: {error}", 422)
        outcome = await run_in_threadpool(
            ctx.actions.raise_event,
            who.user.name,
            instance_id,
            json.dumps(body).encode(),
            _form_key(form),
        )
        return flash(outcome, f"raised {body['event_name']} in {instance_id}")

    @app.post("/ui/instances/{instance_id}/{action}", include_in_schema=False)
    async def ui_control(request: Request, instance_id: str, action: str) -> Response:
        who = await actor(request)
        declared = BY_NAME.get(action)
        if declared is None:
            raise HTTPException(404, f"no action {action!r}")
        form = await request.form()
        body: dict[str, Any] = {}
        reason = str(form.get("reason") or "").strip()
        if reason and declared.takes_reason:
            body["reason"] = reason
        outcome = await run_in_threadpool(
            ctx.actions.control,
            who.user.name,
            action,
            instance_id,
            json.dumps(body).encode(),
            _form_key(form),
        )
        if declared.read is not None:
            return flash(outcome, f"{declared.event.value} published on the status topic")
        return flash(outcome, f"{action} {instance_id}: done")

    @app.post("/ui/bulk", include_in_schema=False)
    async def ui_bulk_prepare(request: Request) -> Response:
        who = await actor(request)
        form = await request.form()
        action = str(form.get("action") or "")
        try:
            query = ListQuery.parse(form)
            purge_older = str(form.get("purge_older_than") or "").strip()
            job = prepare_job(
                ctx,
                who,
                action,
                query,
                reason=str(form.get("reason") or "").strip() or None,
                purge_older_than=purge_older or None,
                key=_form_key(form),
            )
        except BadQuery as bad:
            return _flash_error(templates, str(bad), 422)
        return templates.TemplateResponse(
            request, "job.html", {"job": job, "csrf": who.csrf, "user": who.user}
        )

    @app.post("/ui/jobs/{job_id}", include_in_schema=False)
    async def ui_job_run(request: Request, job_id: str) -> Response:
        who = await actor(request)
        job = ctx.jobs.get(job_id)
        if job is None or job.user != who.user.name:
            raise HTTPException(404, "no such bulk action (it may have expired)")
        ctx.jobs.run(job)
        return templates.TemplateResponse(
            request, "job.html", {"job": job, "csrf": who.csrf, "user": who.user}
        )

    @app.get("/ui/jobs/{job_id}", include_in_schema=False)
    def ui_job(request: Request, job_id: str) -> Response:
        who = reader(request)
        job = ctx.jobs.get(job_id)
        if job is None:
            raise HTTPException(404, "no such bulk action (it may have expired)")
        return templates.TemplateResponse(
            request, "job.html", {"job": job, "csrf": who.csrf, "user": who.user}
        )

    @app.get("/ui/stream", include_in_schema=False)
    async def ui_stream(request: Request) -> Response:
        reader(request)
        return _sse(request, ctx, compact=True)

    # --- the API ------------------------------------------------------------------------------

    api.add_routes(app, ctx, reader, actor, key_of)
    return app


def prepare_job(
    ctx: Context,
    who: Principal,
    action: str,
    query: ListQuery,
    *,
    reason: str | None,
    purge_older_than: str | None,
    key: str | None,
) -> Job:
    """A bulk action on the instances that match ``query`` now and can take ``action``."""
    if action not in BULK_ACTIONS:
        raise BadQuery(f"action must be one of {', '.join(BULK_ACTIONS)}")
    cutoff = duration(purge_older_than, "older_than") if purge_older_than else None
    by_age = "older_than" in BY_NAME[action].model.model_fields  # its message filters by age
    if not by_age and cutoff is not None:
        raise BadQuery(f"older_than is for {_by_age()} only")
    chosen = [
        e.instance_id
        for e in sorted(ctx.index.select(query.filter()), key=lambda e: e.instance_id)
        if eligible(action, e.status) and (not by_age or older(e.created_at, cutoff))
    ]
    described = _describe(query, action, purge_older_than)
    return ctx.jobs.prepare(
        who.user.name, action, chosen, reason=reason, key=key, description=described
    )


def _by_age() -> str:
    return "/".join(a for a in BULK_ACTIONS if "older_than" in BY_NAME[a].model.model_fields)


def _describe(query: ListQuery, action: str, purge_older_than: str | None) -> str:
    parts = [f"{k}={v}" for k, v in query.params(page=None, per_page=None, sort=None).items()]
    if purge_older_than:
        parts.append(f"created more than {purge_older_than} ago")
    which = ", ".join(parts) or "all instances"
    return f"{action}: {which}"


def instance_context(ctx: Context, who: Principal, instance_id: str) -> dict[str, Any]:
    """Everything the instance page shows: one read of the instance and one of its history."""
    state: InstanceState | None = None
    timeline: list[TimelineEntry] = []
    error = ""
    code = 200
    try:
        state = ctx.gateway.get_state(instance_id, payloads=True)
        if state is None:
            error, code = f"unknown instance {instance_id} (never started, or purged)", 404
        else:
            timeline = build_timeline(ctx.gateway.history(instance_id))
    except Missing:
        error, code = f"unknown instance {instance_id} (never started, or purged)", 404
    except (Rejected, Transient) as problem:
        error, code = f"could not read {instance_id}: {problem}", 503
    entry: Entry | None = ctx.index.get(instance_id)
    return {
        "user": who.user,
        "csrf": who.csrf,
        "instance_id": instance_id,
        "state": state,
        "entry": entry,
        "timeline": timeline,
        "events": ctx.index.recent(instance_id),
        "error": error,
        "status_code": code,
    }


def _sse(request: Request, ctx: Context, *, compact: bool) -> StreamingResponse:
    """Server-sent events: each status event the console sees, as it comes. ``Last-Event-ID``
    resumes after an event still in the console's feed (the last 2,000)."""
    last = request.headers.get("last-event-id")
    start = int(last) if last and last.isdigit() else ctx.index.seq

    async def stream() -> AsyncIterator[bytes]:
        seq = start
        quiet = 0.0
        yield b"retry: 2000\n\n"
        while not ctx.stopping.is_set():
            if await request.is_disconnected():
                return
            items = ctx.index.feed_since(seq)
            for item in items:
                seq = item.seq
                data: dict[str, Any] = (
                    {
                        "event": item.data.get("event"),
                        "instance_id": item.data.get("instance_id"),
                        "status": item.data.get("status"),
                    }
                    if compact
                    else {"id": item.event_id, "data": item.data}
                )
                line = json.dumps(data, separators=(",", ":"))
                yield f"id: {item.seq}\nevent: status\ndata: {line}\n\n".encode()
            if items:
                quiet = 0.0
            else:
                quiet += _STREAM_POLL_SECONDS
                if quiet >= _KEEPALIVE_SECONDS:
                    quiet = 0.0
                    yield b": keep-alive\n\n"
            await asyncio.sleep(_STREAM_POLL_SECONDS)

    return StreamingResponse(
        stream(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


# --- small helpers --------------------------------------------------------------------------------


def _workflow_names(ctx: Context, items: list[Entry]) -> list[str]:
    return sorted(set(ctx.workflows) | {e.workflow for e in items if e.workflow})


def _flash_error(templates: Jinja2Templates, message: str, status: int) -> Response:
    return HTMLResponse(
        templates.get_template("flash.html").render(ok=False, message=message),
        status_code=status,
    )


def _form_key(form: Any) -> str | None:
    key = form.get("idempotency_key")
    if isinstance(key, str) and key and valid_key(key):
        return key
    return None


def _is_form(request: Request) -> bool:
    kind = request.headers.get("content-type", "")
    return kind.startswith(("application/x-www-form-urlencoded", "multipart/form-data"))


def _local(target: str) -> str:
    """Only a path on this server (no open redirect)."""
    return target if target.startswith("/") and not target.startswith("//") else "/"


def _client(request: Request) -> str:
    return request.client.host if request.client else "?"


def _refused(request: Request, who: Principal, why: str) -> None:
    audit.info(
        json.dumps(
            {
                "console": "refused",
                "user": who.user.name,
                "path": request.url.path,
                "why": why,
            }
        )
    )


def _set_session(response: Response, request: Request, cookie: str) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=SESSION_SECONDS,
        path="/",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def _when(value: Any) -> str:
    """A time as the pages show it: UTC, to the millisecond."""
    if value is None:
        return ""
    text: str = value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    return text + "Z"
