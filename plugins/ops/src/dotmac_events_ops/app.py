"""The ops HTTP application (Starlette) and :class:`OpsServer`, which runs it with uvicorn
in the bus's own event loop."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from dotmac.events import EventBus
from dotmac.events.dlq import DeadLetter
from dotmac.events.errors import EventBusError
from dotmac.events.metrics import LagSampler, register_lag_collector

from .health import LoopLagProbe, readiness

__all__ = ["OpsServer", "OpsState", "create_app"]

log = logging.getLogger(__name__)

_TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
DLQ_LIMIT = 1000  # dead letters read per topic for the browser


def is_dead_letter_topic(topic: str) -> bool:
    """Whether ``topic`` is named like a dead-letter topic (``<topic>.dlq``, the default
    ``dlq_topic``); a subscription's own ``dlq_topic`` is known from the subscription."""
    return topic.endswith(".dlq")


class OpsState:
    """What the routes share: the bus, the lag sampler, the loop probe, the settings."""

    def __init__(
        self,
        bus: EventBus,
        *,
        registry: Any = None,
        topics: Iterable[str] | None = None,
        all_topics: bool = False,
        dlq_topics: Iterable[str] | None = None,
        token: str | None = None,
        lag_interval: float = 5.0,
        loop_lag_threshold: float = 1.0,
        readiness_timeout: float = 2.0,
        expect_subscriptions: int = 0,
        asyncapi: dict[str, Any] | None = None,
    ) -> None:
        import prometheus_client as prom

        self.bus = bus
        self.registry = registry if registry is not None else prom.REGISTRY
        self.sampler = LagSampler(bus, topics=topics, interval=lag_interval, all_topics=all_topics)
        self._lag_collector = register_lag_collector(self.sampler, self.registry)
        self._dlq_topics = None if dlq_topics is None else tuple(dlq_topics)
        # Kept private: never in a repr, a log line or a page.
        self.__token = token.encode() if token else None
        self.probe = LoopLagProbe(threshold=loop_lag_threshold)
        self.readiness_timeout = readiness_timeout
        self.expect_subscriptions = expect_subscriptions
        self.asyncapi = asyncapi

    @property
    def writable(self) -> bool:
        return self.__token is not None

    def token_ok(self, given: str | None) -> bool:
        if self.__token is None or not given:
            return False
        return hmac.compare_digest(self.__token, given.encode())

    def dlq_topics(self) -> list[str]:
        """The dead-letter topics to browse: the configured ones, else those of the
        watched topics' subscriptions (``dlq_topic`` or ``<topic>.dlq``); watching
        every topic, the listed ones named ``<topic>.dlq``."""
        if self._dlq_topics is not None:
            return list(self._dlq_topics)
        found: set[str] = set()
        for sub in self.bus.subscriptions:
            for topic in sub.topics:
                if topic.startswith("dotmac.reply."):
                    continue
                found.add(sub.options.dlq_topic or f"{topic}.dlq")
        for topic in self.sampler.topics():
            if not self.sampler.all_topics:
                found.add(f"{topic}.dlq")
            elif is_dead_letter_topic(topic):
                found.add(topic)
        return sorted(found)

    async def start(self) -> None:
        self.probe.start()
        await self.sampler.start()

    async def stop(self) -> None:
        await self.sampler.stop()
        await self.probe.stop()
        with contextlib.suppress(KeyError):
            self.registry.unregister(self._lag_collector)

    def __repr__(self) -> str:
        return f"<OpsState bus={self.bus!r} writable={self.writable}>"


def _state(request: Request) -> OpsState:
    state: OpsState = request.app.state.ops
    return state


# -- probes and metrics ---------------------------------------------------------------------
async def healthz(request: Request) -> Response:
    probe = _state(request).probe
    body = {"status": "ok" if probe.healthy else "blocked", "loop_lag_seconds": round(probe.max_lag, 4)}
    return JSONResponse(body, status_code=200 if probe.healthy else 503)


async def readyz(request: Request) -> Response:
    state = _state(request)
    ok, checks = await readiness(
        state.bus,
        timeout=state.readiness_timeout,
        expect_subscriptions=state.expect_subscriptions,
        sampler=state.sampler,
    )
    return JSONResponse({"ready": ok, **checks}, status_code=200 if ok else 503)


async def metrics(request: Request) -> Response:
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    state = _state(request)
    sampler = state.sampler
    if set(sampler.topics()) - set(sampler.groups) - set(sampler.errors):
        # Topics subscribed since the last refresh (an app subscribes after the server
        # started): ask for them now rather than report nothing until the next round.
        await sampler.refresh()
    return Response(generate_latest(state.registry), media_type=CONTENT_TYPE_LATEST)


async def asyncapi_json(request: Request) -> Response:
    document = _state(request).asyncapi
    if document is None:
        return PlainTextResponse("no AsyncAPI document: the server runs a bus, not an app", status_code=404)
    return JSONResponse(document)


async def asyncapi_html(request: Request) -> Response:
    state = _state(request)
    if state.asyncapi is None:
        return PlainTextResponse("no AsyncAPI document: the server runs a bus, not an app", status_code=404)
    return _TEMPLATES.TemplateResponse(
        request, "asyncapi.html", {"doc": state.asyncapi, "writable": state.writable}
    )


# -- groups ------------------------------------------------------------------------------------
def group_rows(state: OpsState) -> list[dict[str, Any]]:
    rows = []
    for topic in state.sampler.topics():
        for info in state.sampler.groups.get(topic, ()):
            rows.append(
                {
                    "topic": info.topic,
                    "group": info.group,
                    "members": list(info.members),
                    "member_count": info.member_count,
                    "pending": info.pending,
                    "lag": info.lag,
                    "oldest_pending_age": info.oldest_pending_age,
                }
            )
    return rows


def topic_rows(state: OpsState) -> list[dict[str, Any]]:
    """Every watched topic with its number of groups; dead-letter topics marked."""
    dead = set(state.dlq_topics())
    return [
        {
            "topic": topic,
            "groups": len(state.sampler.groups.get(topic, ())),
            "dead_letter": topic in dead or is_dead_letter_topic(topic),
        }
        for topic in state.sampler.topics()
    ]


async def api_groups(request: Request) -> Response:
    state = _state(request)
    await state.sampler.refresh()
    return JSONResponse(
        {
            "groups": group_rows(state),
            "topics": topic_rows(state),
            "errors": state.sampler.errors,
            "refreshed_at": state.sampler.refreshed_at,
        }
    )


async def index(request: Request) -> Response:
    state = _state(request)
    await state.sampler.refresh()
    return _TEMPLATES.TemplateResponse(
        request,
        "index.html",
        {
            "groups": group_rows(state),
            "topics": topic_rows(state),
            "errors": state.sampler.errors,
            "dlq_topics": state.dlq_topics(),
            "writable": state.writable,
        },
    )


# -- dead letters ------------------------------------------------------------------------------
def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def _matches(letter: DeadLetter, filters: dict[str, str]) -> bool:
    if filters.get("topic") and letter.original_topic != filters["topic"]:
        return False
    if filters.get("group") and letter.consumer_group != filters["group"]:
        return False
    if filters.get("error_type") and letter.error_type != filters["error_type"]:
        return False
    since, until = _parse_time(filters.get("since")), _parse_time(filters.get("until"))
    if since is not None and (letter.failed_at is None or letter.failed_at < since):
        return False
    return not (until is not None and (letter.failed_at is None or letter.failed_at > until))


def _letter_row(dlq_topic: str, letter: DeadLetter) -> dict[str, Any]:
    return {"dlq_topic": dlq_topic, **letter.as_record(detail=True)}


async def _letters(
    state: OpsState, dlq_topics: Sequence[str], filters: dict[str, str]
) -> list[dict[str, Any]]:
    rows = []
    for dlq_topic in dlq_topics:
        for letter in await state.bus.dlq.list(dlq_topic, limit=DLQ_LIMIT):
            if _matches(letter, filters):
                rows.append(_letter_row(dlq_topic, letter))
    rows.sort(key=lambda r: r["failed_at"] or "", reverse=True)
    return rows


_FILTERS = ("dlq", "topic", "group", "error_type", "since", "until")


async def dlq_page(request: Request) -> Response:
    state = _state(request)
    filters = {k: request.query_params.get(k, "").strip() for k in _FILTERS}
    topics = state.dlq_topics()
    chosen = [filters["dlq"]] if filters["dlq"] else topics
    try:
        letters = await _letters(state, chosen, filters)
        error = None
    except EventBusError as exc:
        letters, error = [], f"{type(exc).__name__}: {exc}"
    return _TEMPLATES.TemplateResponse(
        request,
        "dlq.html",
        {
            "letters": letters,
            "filters": filters,
            "dlq_topics": topics,
            "writable": state.writable,
            "error": error,
        },
    )


async def dlq_letter(request: Request) -> Response:
    state = _state(request)
    dlq_topic, event_id = request.path_params["dlq_topic"], request.path_params["event_id"]
    try:
        letters = await _letters(state, [dlq_topic], {})
    except EventBusError as exc:
        return PlainTextResponse(f"{type(exc).__name__}: {exc}", status_code=400)
    found = next((row for row in letters if row["event_id"] == event_id), None)
    if found is None:
        return PlainTextResponse(f"no dead letter {event_id} in {dlq_topic}", status_code=404)
    return _TEMPLATES.TemplateResponse(request, "letter.html", {"letter": found, "writable": state.writable})


async def dlq_replay(request: Request) -> Response:
    """GET: the confirmation page; POST with the token and ``confirm=yes``: the replay."""
    state = _state(request)
    if not state.writable:
        return PlainTextResponse("read-only: start the page with a token to replay", status_code=403)
    if request.method == "GET":
        dlq_topic = request.query_params.get("dlq", "")
        ids = request.query_params.getlist("event_id")
        return _TEMPLATES.TemplateResponse(request, "replay.html", {"dlq_topic": dlq_topic, "event_ids": ids})
    form = await request.form()
    given = request.headers.get("authorization", "").removeprefix("Bearer ") or str(form.get("token", ""))
    if not state.token_ok(given):
        log.warning("dead-letter replay refused: wrong or missing token")
        return PlainTextResponse("wrong or missing token", status_code=403)
    if form.get("confirm") != "yes":
        return PlainTextResponse("replay not confirmed", status_code=400)
    dlq_topic = str(form.get("dlq", ""))
    ids = [str(v) for v in form.getlist("event_id")]
    if not ids:
        return PlainTextResponse("no dead letters selected", status_code=400)
    try:
        count = await state.bus.dlq.replay(dlq_topic, event_ids=ids, limit=DLQ_LIMIT)
    except EventBusError as exc:
        return PlainTextResponse(f"{type(exc).__name__}: {exc}", status_code=400)
    log.info("replayed %d dead letters of %s from the ops page", count, dlq_topic)
    return RedirectResponse(f"/dlq?dlq={dlq_topic}&replayed={count}", status_code=303)


def create_app(state: OpsState, *, ui: bool = True) -> Starlette:
    """The Starlette app of ``state``: probes and metrics, and with ``ui`` the page.

    Mount it in an ASGI app of your own, or run it with :class:`OpsServer`. The
    caller starts and stops ``state`` (the app's lifespan does it when run alone).
    """
    routes = [
        Route("/healthz", healthz),
        Route("/readyz", readyz),
        Route("/metrics", metrics),
        Route("/asyncapi.json", asyncapi_json),
    ]
    if ui:
        routes += [
            Route("/", index),
            Route("/api/groups", api_groups),
            Route("/asyncapi", asyncapi_html),
            Route("/dlq", dlq_page),
            Route("/dlq/replay", dlq_replay, methods=["GET", "POST"]),
            Route("/dlq/{dlq_topic}/{event_id}", dlq_letter),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        yield

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.ops = state
    return app


class _EmbeddedServer(uvicorn.Server):
    """uvicorn's server without its signal handlers: the program that runs the bus
    owns SIGINT and SIGTERM (and drains the bus on them)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class OpsServer:
    """Serves the ops app with uvicorn inside the running event loop, next to the bus::

        async with bus, OpsServer(bus, port=8000):
            ...  # /healthz, /readyz, /metrics, and the page at /

    ``port=0`` picks a free port (see :attr:`port` once started). ``token`` enables
    the write actions of the page (dead-letter replay); without it the page is
    read-only. ``topics`` are the topics whose groups are shown (default: those of the
    bus's group subscriptions); ``all_topics=True`` shows every topic of the broker
    instead (listed again at each lag refresh). ``ui=False`` serves the probes and
    metrics only. ``/readyz`` stays false until the bus has ``expect_subscriptions``
    live subscriptions (a service knows how many it opens; the probe then waits for all
    of them). ``asyncapi`` is served at ``/asyncapi.json``.
    """

    def __init__(
        self,
        bus: EventBus,
        *,
        host: str = "127.0.0.1",
        port: int = 8000,
        ui: bool = True,
        token: str | None = None,
        registry: Any = None,
        topics: Iterable[str] | None = None,
        all_topics: bool = False,
        dlq_topics: Iterable[str] | None = None,
        lag_interval: float = 5.0,
        loop_lag_threshold: float = 1.0,
        expect_subscriptions: int = 0,
        asyncapi: dict[str, Any] | None = None,
    ) -> None:
        self.state = OpsState(
            bus,
            registry=registry,
            topics=topics,
            all_topics=all_topics,
            dlq_topics=dlq_topics,
            token=token,
            lag_interval=lag_interval,
            loop_lag_threshold=loop_lag_threshold,
            expect_subscriptions=expect_subscriptions,
            asyncapi=asyncapi,
        )
        self.app = create_app(self.state, ui=ui)
        self.host = host
        self._port = port
        self._server: Any = None
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        if self._server is not None and self._server.servers:
            sockets = self._server.servers[0].sockets
            if sockets:
                return int(sockets[0].getsockname()[1])
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        if self._task is not None:
            return
        await self.state.start()
        config = uvicorn.Config(
            self.app, host=self.host, port=self._port, log_level="warning", lifespan="off", access_log=False
        )
        server = _EmbeddedServer(config)
        self._server = server
        self._task = asyncio.create_task(server.serve(), name="dotmac-events-ops-http")
        while not server.started:
            if self._task.done():
                await self.state.stop()
                self._task.result()  # raises what stopped it (port taken, ...)
                raise RuntimeError("the ops server stopped before it started")
            await asyncio.sleep(0.01)
        log.info("ops server listening on %s", self.url)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        self._server.should_exit = True
        try:
            await asyncio.wait_for(task, 10)
        except asyncio.TimeoutError:
            task.cancel()
        await self.state.stop()

    async def __aenter__(self) -> OpsServer:
        await self.start()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def __repr__(self) -> str:
        return f"<OpsServer {self.host}:{self.port} writable={self.state.writable}>"
