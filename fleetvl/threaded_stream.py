"""A blocking engine's stream, consumed from asyncio: the one adapter every tier uses.

Engines are synchronous (ONNX Runtime, PyTorch): their ``stream`` runs in a worker thread and
hands each item to the event loop as it is produced. When the consumer stops early (the client
went away, the deadline passed), ``cancel`` is set, which the engine checks at its next step,
and the consumer waits for the thread to finish before the engine may be used again.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import TypeVar

from fleetvl.sampling import CancelToken

__all__ = ["stream_in_thread"]

T = TypeVar("T")


class _End:
    pass


async def stream_in_thread(
    produce: Callable[[], Iterator[T]], cancel: CancelToken
) -> AsyncGenerator[T, None]:
    """Yield what ``produce()`` yields, iterated in a worker thread; its exceptions are
    raised here. Leaving early cancels ``cancel`` and waits for the thread — once the
    generator is closed, so iterate it under ``contextlib.aclosing`` (an async generator left
    by ``break``, ``return`` or an exception is otherwise closed only when collected, and the
    engine would be reused while its thread still runs)."""
    loop = asyncio.get_running_loop()
    items: asyncio.Queue[T | BaseException | _End] = asyncio.Queue()

    def work() -> None:
        try:
            for item in produce():
                loop.call_soon_threadsafe(items.put_nowait, item)
        except BaseException as exc:  # noqa: BLE001 - handed to the event loop
            loop.call_soon_threadsafe(items.put_nowait, exc)
        finally:
            loop.call_soon_threadsafe(items.put_nowait, _End())

    worker = loop.run_in_executor(None, work)
    try:
        while not isinstance(item := await items.get(), _End):
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        cancel.cancel()
        with contextlib.suppress(Exception):
            await asyncio.shield(worker)
