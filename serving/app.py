"""The app factory: ``create_app(settings)`` wires the model holder, refresher, log writer and routers."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response, status
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from sqlalchemy import Engine

from adapters import keys
from adapters.prediction_log import create_tables, make_engine
from reggaeton.settings import Settings
from serving.cache import ModelCache
from serving.challenger import ChallengerRefresher
from serving.events import emit_challenger_failing, emit_log_state
from serving.fast_path import ServingApp
from serving.holder import ModelHolder, ServedModel
from serving.live import LiveHolder, LiveStats
from serving.log_writer import PredictionLogWriter
from serving.metrics import ServingMetrics
from serving.middleware import MetricsMiddleware
from serving.refresher import Refresher
from serving.routers import admin, feedback, predictions
from serving.routers import status as status_routes
from serving.schemas import song_json_schema
from serving.service import Live, PredictionService, Services
from serving.shadow import ShadowScorer, ShadowWriter
from serving.source import RegistrySource
from serving.spool import Journal
from serving.threads import fire_and_forget, in_daemon_thread

logger = logging.getLogger(__name__)

# How long start-up waits for the registry when there is no cached model (then it starts not ready).
STARTUP_REGISTRY_TIMEOUT_S = 60.0


def _field_name(loc: tuple[Any, ...]) -> str:
    names = [str(part) for part in loc if isinstance(part, str) and part != "body"]
    return names[-1] if names else "body"


async def _validation_error(_: Request, exc: Exception) -> Response:
    """422 naming the field first in every message; non-finite inputs are echoed as null, never a 500."""
    assert isinstance(exc, RequestValidationError)
    detail = []
    for error in exc.errors():
        loc = tuple(error.get("loc", ()))
        item = {
            "loc": list(loc),
            "msg": f"{_field_name(loc)}: {error.get('msg', 'invalid')}",
            "type": error.get("type"),
        }
        if "input" in error and not isinstance(error["input"], dict | list):
            item["input"] = error["input"]
        detail.append(item)
    body = orjson.dumps({"detail": detail}, default=str)
    return Response(body, status_code=status.HTTP_422_UNPROCESSABLE_CONTENT, media_type="application/json")


async def _load_cached(services: Services, cache: ModelCache) -> None:
    def load() -> ServedModel | None:
        return cache.load(services.settings.mlflow.model_name, keys.verify_keys(services.settings))

    try:
        cached = await in_daemon_thread(load, name="cache-load")
        if cached is not None:
            services.refresher.install(cached)
    except Exception:
        logger.exception("cached model unusable; waiting for the registry")


def _journal(settings: Settings) -> Journal | None:
    """The prediction log's durable spool, or None when durability is off."""
    serving = settings.serving
    if not serving.durable_log:
        return None
    return Journal(
        settings.spool_dir,
        max_bytes=serving.spool_max_bytes,
        segment_bytes=serving.spool_segment_bytes,
        fsync=serving.spool_fsync,
        slots=serving.spool_slots,
    )


def _check_verify_keys(settings: Settings) -> None:
    """Refuse to start without a public key outside local mode: every champion would be refused."""
    trusted = keys.verify_keys(settings)  # raises KeyUnavailable on a key that is not a public key
    if trusted:
        logger.info("decision records verified with key(s) %s", ", ".join(trusted.ids))
    elif settings.mode == "local":
        logger.warning(
            "no public key at %s yet: no champion is served until `reggaeton up` (or a signed decision) "
            "creates it",
            keys.public_path(settings),
        )
    else:
        raise keys.KeyUnavailable(
            "REGGAETON_SIGNING__PUBLIC_KEYS is not set: the API verifies the champion's signed decision "
            "record with it, and would serve nothing"
        )


def _build_services(settings: Settings, metrics: ServingMetrics) -> Services:
    """The server's parts for these settings; nothing started yet."""
    problems = settings.serving_problems()
    if problems:
        raise ValueError("; ".join(problems))
    _check_verify_keys(settings)
    serving = settings.serving
    if (
        settings.prediction_log_url.startswith("sqlite:")
        or serving.model_cache_dir is None
        or (serving.durable_log and serving.spool_dir is None)
    ):
        settings.ensure_state_dir()
    engine = make_engine(settings.prediction_log_url)
    journal = _journal(settings)

    def on_log_state(available: bool, detail: str) -> None:
        spooled = 0 if journal is None else journal.bytes
        model = settings.mlflow.model_name
        fire_and_forget(emit_log_state, model, available, detail, spooled, name="log-state-event")

    log = PredictionLogWriter(
        engine,
        metrics,
        capacity_rows=serving.log_queue_size,
        batch_rows=serving.log_batch_size,
        flush_interval_s=serving.log_flush_interval_s,
        write_stall_s=serving.log_write_stall_s,
        journal=journal,
        retry_after_s=serving.retry_after_s,
        close_timeout_s=serving.log_close_timeout_s,
        on_state=on_log_state,
    )
    holder = ModelHolder()
    cache = ModelCache(settings.model_cache_dir)
    source = RegistrySource(settings)
    refresher = Refresher(holder, source, cache, metrics, serving.poll_interval_s)
    live = _live(settings, engine, metrics)
    return Services(
        settings=settings,
        holder=holder,
        refresher=refresher,
        predictions=PredictionService(holder, log, metrics, serving.micro_batch_max, live),
        log=log,
        engine=engine,
        metrics=metrics,
        cache=cache,
        live=live,
        challenger=ChallengerRefresher(
            live.holder, holder, source, metrics, live.episodes, serving.poll_interval_s
        ),
    )


def _live(settings: Settings, engine: Engine, metrics: ServingMetrics) -> Live:
    """The challenger's side of the server: who it is, its shadow scorer, and the counts the gate reads."""
    stats = LiveStats(settings.replica_name)
    model = settings.mlflow.model_name

    def on_failing(role: str, version: str, kind: str, detail: str) -> None:
        fire_and_forget(emit_challenger_failing, model, role, version, kind, detail, name="challenger-event")

    writer = ShadowWriter(engine, metrics, stats, settings.live)
    shadow = ShadowScorer(settings.live, metrics, stats, writer, on_failing)
    return Live(LiveHolder(), shadow, stats, settings.live)


async def _start(services: Services) -> list[asyncio.Task[None]]:
    """Open the log, load the cached model (else wait, bounded, for the registry), start polling."""
    await asyncio.to_thread(create_tables, services.engine)
    services.log.start()
    services.live.shadow.start()
    await _load_cached(services, services.cache)
    if services.holder.current is None:
        # Nothing cached: wait (bounded) for the registry so the first requests find a model.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(services.refresher.check(), timeout=STARTUP_REGISTRY_TIMEOUT_S)
    return [
        asyncio.create_task(services.refresher.run(), name="champion-poller"),
        asyncio.create_task(services.challenger.run(), name="challenger-poller"),
    ]


async def _stop(services: Services, pollers: list[asyncio.Task[None]]) -> None:
    """Stop polling, answer what is in flight, write the logs out, close the database."""
    for poller in pollers:
        poller.cancel()
    for poller in pollers:
        with contextlib.suppress(asyncio.CancelledError):
            await poller
    await services.predictions.close()
    await asyncio.to_thread(services.live.shadow.close)
    await services.log.close()
    services.engine.dispose()


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the ``Song`` schema the request body refers to."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
        schema.setdefault("components", {}).setdefault("schemas", {})["Song"] = song_json_schema()
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(settings: Settings) -> FastAPI:
    """Build the prediction server for these settings (nothing is loaded until the lifespan starts)."""
    metrics = ServingMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = app.state.services = _build_services(settings, metrics)
        pollers = await _start(services)
        try:
            yield
        finally:
            await _stop(services, pollers)

    app = ServingApp(
        title="Reggaeton classifier",
        summary="Is this song reggaeton? Serves the registry's champion and logs every prediction.",
        version="1.0",
        lifespan=lifespan,
    )
    app.add_exception_handler(RequestValidationError, _validation_error)
    routers = [
        predictions.build_router(settings.serving.max_batch, settings.serving.api_key is not None),
        feedback.router,
        status_routes.router,
        admin.router,
    ]
    for router in routers:
        app.include_router(router)
    routes = [getattr(route, "path", "") for router in routers for route in router.routes]
    # Every request, POST /predict's fast path included, passes the registered middlewares (ServingApp).
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=routes)
    app.openapi = functools.partial(_openapi, app)  # type: ignore[method-assign]
    return app
