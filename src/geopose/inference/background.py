"""Background threads that overlap a scene's reading and writing with the model: a reader
that runs ahead of the consumer (:func:`prefetch`) and a writer that takes finished blocks off
its hands (:class:`BackgroundWriter`). GDAL reads and writes and numpy stretches release the
GIL, so the threads run while the model computes."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")


def prefetch(items: Iterable[T], depth: int = 2, enabled: bool = True) -> Iterator[T]:
    """Iterate ``items`` in a background thread, up to ``depth`` items ahead (a reader
    thread: GDAL reads and numpy stretches release the GIL while the model runs). An error in
    the thread is raised here; closing the iterator early stops the thread."""
    if not enabled:
        yield from items
        return
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(item: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def run() -> None:
        try:
            for x in items:
                if not put((True, x)):
                    return
            put((False, None))
        except BaseException as exc:  # handed to the consumer
            put((False, exc))

    thread = threading.Thread(target=run, name="geopose-reader", daemon=True)
    thread.start()
    try:
        while True:
            ok, x = q.get()
            if not ok:
                if x is not None:
                    raise x
                return
            yield x
    finally:
        stop.set()
        thread.join()


class BackgroundWriter:
    """Calls ``write(array, window)`` of block writers in one background thread, in order,
    at most ``depth`` writes queued (so a slow disk holds back the model, not memory).

    An error in the thread is raised by the next :meth:`put` or by :meth:`close`.
    """

    def __init__(self, depth: int = 2, enabled: bool = True) -> None:
        self.enabled = enabled
        self.error: BaseException | None = None
        if enabled:
            self.q: queue.Queue = queue.Queue(maxsize=max(1, depth))
            self.thread = threading.Thread(target=self._run, name="geopose-writer", daemon=True)
            self.thread.start()

    def _run(self) -> None:
        while True:
            job = self.q.get()
            if job is None:
                return
            if self.error is None:
                try:
                    writer, array, window = job
                    writer.write(array, window)
                except BaseException as exc:  # raised in the main thread
                    self.error = exc

    def put(self, writer: Any, array: np.ndarray, window: Any) -> None:
        """Queue ``writer.write(array, window)``."""
        if not self.enabled:
            writer.write(array, window)
            return
        if self.error is not None:
            raise self.error
        self.q.put((writer, array, window))

    def close(self, raise_error: bool = True) -> None:
        """Wait for the queued writes; raise the thread's error if there was one (and
        ``raise_error``)."""
        if self.enabled and self.thread.is_alive():
            self.q.put(None)
            self.thread.join()
        if raise_error and self.error is not None:
            raise self.error


@contextlib.contextmanager
def background_writer(enabled: bool = True, depth: int = 2) -> Iterator[BackgroundWriter]:
    """A :class:`BackgroundWriter` whose thread has finished when the block ends (use it inside
    the block writers' ``with``, so no write runs while they finish or abort); its error is
    raised unless another one is on its way."""
    bg = BackgroundWriter(depth, enabled)
    try:
        yield bg
    except BaseException:
        bg.close(raise_error=False)
        raise
    bg.close()
