"""Run blocking work (registry calls, model loading) off the event loop in daemon threads.

Daemon threads rather than an executor: a registry call stuck on an unreachable MLflow server must
never hold up the server's shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # the caller gave up waiting (timeout or cancellation)
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


async def in_daemon_thread(fn: Callable[..., T], *args: Any, name: str = "serving-worker") -> T:
    """Call ``fn(*args)`` in a new daemon thread and await its result."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def target() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn(*args)
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # RuntimeError: the loop closed, the server stopped
            loop.call_soon_threadsafe(_settle, future, result, error)

    threading.Thread(target=target, name=name, daemon=True).start()
    return await future


def fire_and_forget(fn: Callable[..., Any], *args: Any, name: str = "serving-background") -> None:
    """Call ``fn(*args)`` in a daemon thread without waiting (e.g. sending an event)."""
    threading.Thread(target=fn, args=args, name=name, daemon=True).start()
