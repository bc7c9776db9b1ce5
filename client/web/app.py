"""The web UI: a Starlette application that is a client of the metadata and blob services.

It keeps no data of its own and enforces nothing the services do not: every page is built from calls through
``mreg.client.Registry``, made with the signed-in user's token when authentication is on, so what a principal may
not read is refused by the services and shown as such. Sign-in turns a token (checked with ``whoami``) into a
signed, HttpOnly, SameSite=Strict session cookie; every form that changes something carries a CSRF token that is
checked here. Pages are server-rendered Jinja2 (autoescaped); htmx refreshes the live parts of a page when the
Watch feed, relayed as server-sent events by ``/events``, reports a change under it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mreg.client.channels import KEEPALIVE_SECONDS, Credentials, open_channel
from mreg.client.errors import MregError
from mreg.client.formatting import human_size
from mreg.client.models import Link, Version
from mreg.client.registry import Registry, WatchStream
from mreg.client.web import render

log = logging.getLogger(__name__)
T = TypeVar("T")

HERE = Path(__file__).parent
PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
# The chart reads at most this many versions, and a version page shows at most this many links, so a huge
# registry stays fast.
CHART_VERSIONS = 1000
MAX_LINKS_SHOWN = 100
MANIFEST_SHOWN = 2000
# Alias histories shown on a collection's page: this many aliases, this many moves each.
MAX_HISTORIES = 10
HISTORY_EVENTS = 20
# How many latest-member lookups a project page makes at once.
LATEST_LOOKUPS = 8
# A Watch stream is reopened this often (from the last sequence seen); a closed page cancels it at once.
WATCH_WINDOW_SECONDS = 20.0
SSE_KEEPALIVE_SECONDS = 15.0
SSE_POLL_SECONDS = 0.5
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
ORDER_KEYS = ("index", "create_time", "size_bytes")


@dataclass(frozen=True)
class WebConfig:
    """Where the services are and how the web UI talks to them.

    ``credentials`` carry TLS settings (their token, if any, is ignored: each user signs in with their own).
    ``session_secret`` signs the session cookies; a random one (the default) signs everyone out on a restart.
    ``secure_cookies`` marks the cookie Secure, for a UI served behind HTTPS.
    ``default_entity`` is the entity the home page offers when the signed-in token's scope names none.
    """

    metadata_addr: str
    blob_addr: str
    credentials: Credentials = field(default_factory=Credentials)
    session_secret: str = ""
    secure_cookies: bool = False
    timeout: float = 30.0
    default_entity: str = ""  # offered on the home page to callers whose token does not name one
    keepalive: float = KEEPALIVE_SECONDS


class Connections:
    """One Registry per token in use (and one without a token), reused across requests; the oldest are closed."""

    def __init__(self, config: WebConfig, size: int = 64) -> None:
        self.config = config
        self.size = size
        self._registries: OrderedDict[str | None, Registry] = OrderedDict()
        self._lock = threading.Lock()

    def registry(self, token: str | None) -> Registry:
        with self._lock:
            registry = self._registries.get(token)
            if registry is not None:
                self._registries.move_to_end(token)
                return registry
            credentials = replace(self.config.credentials, token=token)
            registry = Registry(
                open_channel(self.config.metadata_addr, credentials, keepalive=self.config.keepalive),
                open_channel(self.config.blob_addr, credentials, keepalive=self.config.keepalive),
                actor="mreg-web",
                timeout=self.config.timeout,
                use_cache=False,
            )
            self._registries[token] = registry
            while len(self._registries) > self.size:
                _, oldest = self._registries.popitem(last=False)
                # A request may still be using it: close it once any call it started has timed out.
                closer = threading.Timer(self.config.timeout + 1, oldest.close)
                closer.daemon = True
                closer.start()
            return registry

    def close(self) -> None:
        with self._lock:
            for registry in self._registries.values():
                registry.close()
            self._registries.clear()


def _segment(value: Any) -> str:
    return quote(str(value), safe="")


def url_of(kind: str, name: str, index: int | None = None) -> str:
    """The page of a collection (``kind`` "a" artifact, "m" registered model) or of one of its versions."""
    entity, project, collection = name.split(":", 1)[0].split("/", 2)
    base = f"/{kind}/{_segment(entity)}/{_segment(project)}/{_segment(collection)}"
    return base if index is None else f"{base}/v/{index}"


def version_url(version: Version) -> str:
    return url_of("a", version.artifact, version.index)


def _templates() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(["html", "svg"], default=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["size"] = human_size
    env.filters["seg"] = _segment
    env.filters["value"] = render.display_value
    env.filters["markdown"] = render.markdown
    env.filters["time"] = lambda t: t.strftime("%Y-%m-%d %H:%M:%S UTC") if t else ""
    env.globals.update(url_of=url_of, version_url=version_url, lookup=render.lookup)
    return env


class WebUI:
    """The application's state and its pages."""

    def __init__(self, config: WebConfig) -> None:
        self.config = config
        self.connections = Connections(config)
        self.env = _templates()
        self._auth_enabled: bool | None = None
        # Set when the server stops: event streams end at once instead of holding the shutdown up.
        self.stopping = threading.Event()

    # --- plumbing -------------------------------------------------------------------------------

    def auth_enabled(self) -> bool:
        """Whether the services require tokens: asked once, without a token (GetCaller says, or refuses)."""
        if self._auth_enabled is None:
            try:
                self._auth_enabled = self.connections.registry(None).whoami().authentication_enabled
            except MregError as e:
                if e.code != "UNAUTHENTICATED":
                    raise
                self._auth_enabled = True
        return self._auth_enabled

    def registry(self, request: Request) -> Registry:
        return self.connections.registry(request.session.get("token"))

    async def call(self, request: Request, fn: Callable[[Registry], T]) -> T:
        """Runs ``fn`` with the caller's registry on a worker thread (the client is blocking)."""
        registry = self.registry(request)
        return await run_in_threadpool(fn, registry)

    def csrf_token(self, request: Request) -> str:
        token = request.session.get("csrf")
        if not token:
            token = secrets.token_urlsafe(32)
            request.session["csrf"] = token
        return str(token)

    async def check_csrf(self, request: Request) -> dict[str, Any]:
        """The posted form, if it carries this session's CSRF token; else ``CsrfRefused``."""
        form = await request.form()
        sent = str(form.get("csrf", ""))
        expected = str(request.session.get("csrf", ""))
        if not expected or not hmac.compare_digest(sent.encode(), expected.encode()):
            raise CsrfRefused()
        return {k: str(v) for k, v in form.items()}

    def page(self, request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
        # A fragment (a live refresh) leaves the flash message to the next whole page, which the user sees.
        flash = None if template.startswith("_") else request.session.pop("flash", None)
        context.setdefault("flash", flash)
        html = self.env.get_template(template).render(
            request=request,
            csrf=self.csrf_token(request),
            who=request.session.get("who"),
            **context,
        )
        return HTMLResponse(html, status_code=status_code)

    def error_page(self, request: Request, error: MregError) -> Response:
        if error.code == "UNAUTHENTICATED":
            request.session.pop("token", None)
            request.session.pop("who", None)
            target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            if request.headers.get("HX-Request"):
                # A live refresh of part of a page: send the whole page to sign-in, not the form into the part.
                target = request.headers.get("HX-Current-URL", "/")
                target = _safe_next("/" + target.split("://", 1)[-1].split("/", 1)[-1] if "://" in target else target)
                return Response(status_code=204, headers={"HX-Redirect": f"/signin?{urlencode({'next': target})}"})
            return RedirectResponse(f"/signin?{urlencode({'next': target})}", status_code=303)
        status = {"NOT_FOUND": 404, "PERMISSION_DENIED": 403, "INVALID_ARGUMENT": 400, "UNAVAILABLE": 503}
        return self.page(request, "error.html", status.get(error.code, 500), error=error)

    # --- sign-in --------------------------------------------------------------------------------

    async def signin_form(self, request: Request) -> Response:
        return self.page(request, "signin.html", next=_safe_next(request.query_params.get("next")))

    async def signin(self, request: Request) -> Response:
        try:
            form = await self.check_csrf(request)
        except CsrfRefused:
            return self.page(request, "signin.html", 403, next="/", message="The form expired; sign in again.")
        token = form.get("token", "").strip()
        target = _safe_next(form.get("next"))
        if not token:
            return self.page(request, "signin.html", 400, next=target, message="Paste a token to sign in.")
        try:
            caller = await run_in_threadpool(lambda: self.connections.registry(token).whoami())
        except MregError as e:
            message = (
                "That token is not valid (unknown, expired or revoked)." if e.code == "UNAUTHENTICATED" else str(e)
            )
            return self.page(request, "signin.html", 401, next=target, message=message)
        request.session.clear()  # a new session: a fresh CSRF token, nothing carried over from before sign-in
        request.session["token"] = token
        request.session["who"] = {"name": caller.token.name, "role": caller.token.role, "scope": caller.token.scope}
        return RedirectResponse(target, status_code=303)

    async def signout(self, request: Request) -> Response:
        try:
            await self.check_csrf(request)
        except CsrfRefused:
            return Response("CSRF token missing or wrong", status_code=403)
        request.session.clear()
        return RedirectResponse("/signin", status_code=303)

    # --- browsing -------------------------------------------------------------------------------

    async def home(self, request: Request) -> Response:
        entity = request.query_params.get("entity", "").strip()
        if entity:
            return RedirectResponse(f"/e/{_segment(entity)}", status_code=303)
        if not request.session.get("token"):
            try:
                auth = await run_in_threadpool(self.auth_enabled)
            except MregError as e:
                return self.error_page(request, e)
            if auth:
                return RedirectResponse("/signin", status_code=303)
        who = request.session.get("who") or {}
        scope = str(who.get("scope", ""))
        default = self.config.default_entity
        suggested = scope.split("/")[0] if scope and scope != "*" else default
        return self.page(request, "home.html", suggested=suggested)

    async def entity(self, request: Request) -> Response:
        entity = request.path_params["entity"]
        try:
            projects = await self.call(request, lambda r: list(r.list_projects(entity, limit=500)))
        except MregError as e:
            return self.error_page(request, e)
        return self.page(request, "entity.html", entity=entity, projects=projects)

    async def project(self, request: Request) -> Response:
        entity, project = request.path_params["entity"], request.path_params["project"]
        name = f"{entity}/{project}"

        def load(r: Registry) -> dict[str, Any]:
            artifacts = list(r.list_artifacts(name, limit=500))
            models = list(r.list_registered_models(name, limit=500))

            # One call per collection for its latest member (no RPC lists them with it), a few at a time.
            def newest_version(name: str) -> Version | None:
                page, _ = r.list_versions_page(name, page_size=1)
                return page[0] if page else None

            def newest_link(name: str, index: int) -> Link | None:
                try:
                    return r.resolve(f"{name}:v{index}").link
                except MregError:
                    return None

            with ThreadPoolExecutor(LATEST_LOOKUPS) as pool:
                versions = {a.name: pool.submit(newest_version, a.name) for a in artifacts if a.version_count}
                links = {
                    m.name: pool.submit(newest_link, m.name, m.aliases["latest"])
                    for m in models
                    if "latest" in m.aliases
                }
                latest = {name: future.result() for name, future in versions.items()}
                model_latest = {name: future.result() for name, future in links.items()}
            return {"artifacts": artifacts, "models": models, "latest": latest, "model_latest": model_latest}

        try:
            data = await self.call(request, load)
        except MregError as e:
            return self.error_page(request, e)
        return self.page(request, "project.html", entity=entity, project=project, name=name, **data)

    def _artifact_name(self, request: Request) -> str:
        p = request.path_params
        return f"{p['entity']}/{p['project']}/{p['name']}"

    async def artifact(self, request: Request) -> Response:
        name = self._artifact_name(request)
        q = request.query_params
        filter_text = q.get("filter", "")
        order = q.get("order", "")
        token = q.get("page", "")
        columns = [c.strip() for c in q.get("cols", "").split(",") if c.strip()][:12]
        try:
            page_size = max(1, min(MAX_PAGE_SIZE, int(q.get("size", PAGE_SIZE))))
        except ValueError:
            page_size = PAGE_SIZE
        fragment = q.get("fragment") == "versions"
        started = time.perf_counter()

        def load(r: Registry) -> dict[str, Any]:
            artifact = r.get_artifact(name)
            filter_error: MregError | None = None
            versions: list[Version] = []
            next_token = ""
            try:
                versions, next_token = r.list_versions_page(name, page_size, token, filter_text, order)
            except MregError as e:
                if e.code != "INVALID_ARGUMENT":
                    raise
                filter_error = e
            history = {}
            if not fragment:
                # latest moves with every commit: its history is the versions table itself.
                aliases = sorted(a for a in artifact.aliases if a != "latest")[:MAX_HISTORIES]
                history = {alias: list(r.alias_history(name, alias, limit=HISTORY_EVENTS)) for alias in aliases}
            return {
                "artifact": artifact,
                "history": history,
                "versions": versions,
                "next_token": next_token,
                "filter_error": filter_error,
            }

        try:
            data = await self.call(request, load)
        except MregError as e:
            return self.error_page(request, e)
        elapsed_ms = (time.perf_counter() - started) * 1000
        error = data["filter_error"]
        position = None
        if error is not None and error.metadata.get("position", "").isdigit():
            position = int(error.metadata["position"])
        base_query = {k: v for k, v in {"filter": filter_text, "order": order, "cols": ",".join(columns)}.items() if v}
        context = dict(
            name=name,
            filter_text=filter_text,
            filter_position=position,
            order=order,
            columns=columns,
            page_token=token,
            base_query=base_query,
            query=lambda **kw: urlencode({k: v for k, v in {**base_query, **kw}.items() if v}),
            sort_link=lambda key: _sort_link(key, order, base_query),
            elapsed_ms=elapsed_ms,
            **data,
        )
        if fragment:
            response = self.page(request, "_versions.html", **context)
        else:
            response = self.page(request, "artifact.html", 400 if error else 200, **context)
        # The whole request as the server saw it (service calls and rendering), and the service calls alone.
        total_ms = (time.perf_counter() - started) * 1000
        response.headers["Server-Timing"] = f"app;dur={total_ms:.1f}, services;dur={elapsed_ms:.1f}"
        return response

    async def version(self, request: Request) -> Response:
        name = self._artifact_name(request)
        index = request.path_params["index"]
        ref = f"{name}:v{index}"

        def load(r: Registry) -> dict[str, Any]:
            version = r.get_version(ref)
            if version.manifest_omitted:
                version = r.resolve(ref).version
            lineage = r.lineage(ref)
            return {"version": version, "lineage": lineage, "links": _links_shown(r, lineage.links)}

        try:
            data = await self.call(request, load)
        except MregError as e:
            return self.error_page(request, e)
        version: Version = data["version"]
        tree = render.file_tree(version.manifest[:MANIFEST_SHOWN])
        picture = render.lineage_picture(
            data["lineage"].producer_run,
            version.name,
            [link.name for link in data["links"]],
            data["lineage"].consumer_runs,
        )
        return self.page(
            request,
            "version.html",
            name=name,
            tree=tree,
            truncated=len(version.manifest) > MANIFEST_SHOWN,
            picture=picture,
            metadata=render.flatten(version.metadata),
            **data,
        )

    async def chart(self, request: Request) -> Response:
        name = self._artifact_name(request)
        key = request.query_params.get("key", "")

        def load(r: Registry) -> list[Version]:
            r.get_artifact(name)
            return list(r.list_versions(name, page_size=500, limit=CHART_VERSIONS))

        try:
            versions = await self.call(request, load)
        except MregError as e:
            return self.error_page(request, e)
        keys = render.numeric_keys(versions)
        if not key and keys:
            key = keys[0]
        svg = render.metric_chart(versions, key) if key else None
        return self.page(
            request, "chart.html", name=name, key=key, keys=keys, svg=svg, shown=len(versions), limit=CHART_VERSIONS
        )

    async def compare(self, request: Request) -> Response:
        name = self._artifact_name(request)
        a, b = request.query_params.get("a", ""), request.query_params.get("b", "")
        if not (a.isdigit() and b.isdigit()):
            return self.page(request, "compare.html", name=name, a=a, b=b, before=None, after=None)

        def load(r: Registry) -> tuple[Version, Version]:
            return r.resolve(f"{name}:v{a}").version, r.resolve(f"{name}:v{b}").version

        try:
            before, after = await self.call(request, load)
        except MregError as e:
            return self.error_page(request, e)
        files = render.compare_files(before.manifest, after.manifest)
        counts = {kind: sum(1 for f in files if f.change == kind) for kind in ("added", "removed", "changed", "same")}
        return self.page(
            request,
            "compare.html",
            name=name,
            a=a,
            b=b,
            before=before,
            after=after,
            metadata=render.compare_metadata(before.metadata, after.metadata),
            files=[f for f in files if f.change != "same"],
            counts=counts,
        )

    async def model(self, request: Request) -> Response:
        p = request.path_params
        name = f"{p['entity']}/{p['project']}/{p['name']}"
        fragment = request.query_params.get("fragment") == "live"

        def load(r: Registry) -> dict[str, Any]:
            model = r.get_registered_model(name)
            links = list(r.list_links(name, limit=500))
            aliases = sorted(a for a in model.aliases if a != "latest")[:MAX_HISTORIES]
            history = {alias: list(r.alias_history(name, alias, limit=HISTORY_EVENTS)) for alias in aliases}
            return {"model": model, "links": links, "history": history}

        try:
            data = await self.call(request, load)
        except MregError as e:
            return self.error_page(request, e)
        template = "_model_live.html" if fragment else "model.html"
        return self.page(request, template, name=name, **data)

    # --- changing -------------------------------------------------------------------------------

    async def promote(self, request: Request) -> Response:
        """Moves an alias with compare-and-set: the form carries the index the page showed (or "none")."""
        p = request.path_params
        kind = p["kind"]
        if kind not in ("a", "m"):
            return Response("not found", status_code=404)
        name = f"{p['entity']}/{p['project']}/{p['name']}"
        back = url_of(kind, name)
        try:
            form = await self.check_csrf(request)
        except CsrfRefused:
            return Response("CSRF token missing or wrong: reload the page and try again", status_code=403)
        alias = form.get("alias", "").strip()
        target = form.get("target", "").strip().removeprefix("v")
        expected = form.get("expected", "").strip()
        # expected_index is an int64: a bigger number (a forged form) would fail to encode rather than be refused.
        expected_fits = expected == "none" or (expected.isdigit() and int(expected) < 2**63)
        if not alias or not target.isdigit() or not expected_fits:
            request.session["flash"] = {"kind": "error", "text": "Give an alias and a version number (e.g. 3)."}
            return RedirectResponse(back, status_code=303)

        def move(r: Registry) -> str:
            try:
                moved = r.set_alias(
                    f"{name}:v{target}",
                    alias,
                    expected_index=int(expected) if expected != "none" else None,
                    expect_unset=expected == "none",
                )
            except MregError as e:
                if e.reason != "ALIAS_EXPECTATION_FAILED":
                    raise
                return _conflict_message(r, name, alias, expected, e)
            before = "nothing" if moved.previous_index is None else f"v{moved.previous_index}"
            return f"ok:{alias} moved from {before} to v{moved.index}."

        try:
            outcome = await self.call(request, move)
        except MregError as e:
            if e.code == "UNAUTHENTICATED":
                return self.error_page(request, e)
            request.session["flash"] = {"kind": "error", "text": f"Not moved: {e.code}: {e.message}"}
            return RedirectResponse(back, status_code=303)
        if outcome.startswith("ok:"):
            request.session["flash"] = {"kind": "ok", "text": outcome[3:]}
        else:
            request.session["flash"] = {"kind": "conflict", "text": outcome}
        return RedirectResponse(back, status_code=303)

    # --- live -----------------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        """Server-sent events: one ``change`` event per Watch event under ``prefix`` the caller may read."""
        prefix = request.query_params.get("prefix", "")
        registry = self.registry(request)
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        stop = threading.Event()

        def put(item: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop closed: the server is stopping
                loop.call_soon_threadsafe(queue.put_nowait, item)

        streams: list[WatchStream] = []
        lock = threading.Lock()

        def relay() -> None:
            cursor = 0
            try:
                while not stop.is_set():
                    stream = registry.open_watch(
                        cursor, from_now=cursor == 0, resource_prefix=prefix, timeout=WATCH_WINDOW_SECONDS
                    )
                    with lock:
                        if stop.is_set():
                            stream.cancel()
                        streams[:] = [stream]
                    try:
                        for update in stream:
                            cursor = update.sequence
                            if update.event is not None:
                                put(update.event)
                    except MregError as e:
                        if e.code != "DEADLINE_EXCEEDED":
                            put(e)
                            return
            finally:
                put(None)

        threading.Thread(target=relay, name="mreg-web-watch", daemon=True).start()

        async def stream() -> AsyncIterator[str]:
            try:
                yield "retry: 2000\n: connected\n\n"
                idle = 0.0
                while not self.stopping.is_set():
                    try:
                        item = await asyncio.wait_for(queue.get(), SSE_POLL_SECONDS)
                    except TimeoutError:
                        idle += SSE_POLL_SECONDS
                        if idle >= SSE_KEEPALIVE_SECONDS:
                            idle = 0.0
                            yield ": keep-alive\n\n"
                        continue
                    idle = 0.0
                    if item is None or isinstance(item, MregError):
                        return  # EventSource reconnects after `retry`
                    data = json.dumps(
                        {"kind": item.kind, "resource": item.resource, "actor": item.actor, "sequence": item.sequence}
                    )
                    yield f"event: change\ndata: {data}\n\n"
            finally:
                # The page went away (or the server stops): end the Watch stream now, not at its next message.
                with lock:
                    stop.set()
                    for stream in streams:
                        stream.cancel()

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)


class SecurityHeaders:
    """Adds the Content-Security-Policy and friends to every response (plain ASGI: streams pass through as they are)."""

    HEADERS = {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "same-origin",
        "X-Frame-Options": "DENY",
    }

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for key, value in self.HEADERS.items():
                    headers.setdefault(key, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class CsrfRefused(Exception):
    """A state-changing form without this session's CSRF token."""


def _safe_next(target: str | None) -> str:
    """A redirect target after sign-in: a path on this site, never another origin."""
    if target and target.startswith("/") and not target.startswith("//") and "\\" not in target:
        return target
    return "/"


def _sort_link(key: str, current: str, base_query: dict[str, str]) -> str:
    """The query string that orders by ``key``, descending first, ascending when it already is descending."""
    words = current.split()
    now_desc = not words or (len(words) == 2 and words[1] == "desc") or (len(words) == 1 and words[0] == "index")
    same = (words[0] if words else "index") == key
    direction = "asc" if same and now_desc else "desc"
    query = {k: v for k, v in base_query.items() if k != "order"}
    query["order"] = f"{key} {direction}"
    return urlencode(query)


@dataclass(frozen=True)
class LinkShown:
    """A registered model's link to the version a page shows, with the model's aliases that name it."""

    name: str
    registered_model: str
    aliases: tuple[str, ...]


def _links_shown(r: Registry, names: tuple[str, ...]) -> list[LinkShown]:
    """The links GetLineage names (those the caller may read), with their aliases: one call per model."""
    shown = []
    for name in names[:MAX_LINKS_SHOWN]:
        model, _, index = name.rpartition(":v")
        with contextlib.suppress(MregError):  # deleted since the lineage was read
            aliases = r.get_registered_model(model).aliases
            shown.append(LinkShown(name, model, tuple(sorted(a for a, i in aliases.items() if i == int(index)))))
    return shown


def _conflict_message(r: Registry, collection: str, alias: str, expected: str, error: MregError) -> str:
    """What to tell someone whose promotion lost a race: where the alias is now, and who moved it when."""
    current = error.metadata.get("current_index", "")
    now = f"v{current}" if current not in ("", "-1") else "nothing"
    shown = "nothing" if expected == "none" else f"v{expected}"
    who = ""
    with contextlib.suppress(MregError):
        for event in r.alias_history(collection, alias, limit=1):
            when = event.create_time.strftime("%Y-%m-%d %H:%M:%S UTC") if event.create_time else "just now"
            who = f" by {event.actor or 'someone'} at {when}"
    return (
        f"Not moved: {alias} was changed{who} and now names {now}, not {shown} as this page showed. "
        "Nothing was overwritten; check the new state and try again."
    )


def create_app(config: WebConfig) -> Starlette:
    """The web UI as an ASGI application."""
    ui = WebUI(config)

    async def healthz(request: Request) -> Response:
        return Response("ok", media_type="text/plain")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        ui.connections.close()

    artifact = "/a/{entity}/{project}/{name}"
    routes = [
        Route("/", ui.home),
        Route("/healthz", healthz),
        Route("/signin", ui.signin_form, methods=["GET"]),
        Route("/signin", ui.signin, methods=["POST"]),
        Route("/signout", ui.signout, methods=["POST"]),
        Route("/events", ui.events),
        Route("/e/{entity}", ui.entity),
        Route("/p/{entity}/{project}", ui.project),
        Route(artifact, ui.artifact),
        Route(artifact + "/v/{index:int}", ui.version),
        Route(artifact + "/chart", ui.chart),
        Route(artifact + "/compare", ui.compare),
        Route("/m/{entity}/{project}/{name}", ui.model),
        Route("/{kind:str}/{entity}/{project}/{name}/promote", ui.promote, methods=["POST"]),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[
            Middleware(SecurityHeaders),
            Middleware(
                SessionMiddleware,
                secret_key=config.session_secret or secrets.token_urlsafe(32),
                session_cookie="mreg_session",
                max_age=12 * 3600,
                same_site="strict",
                https_only=config.secure_cookies,
            ),
        ],
        lifespan=lifespan,
    )
    app.state.ui = ui
    return app
