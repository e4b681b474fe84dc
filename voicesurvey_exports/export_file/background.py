"""Reading ahead and writing behind on threads of their own.

Rendering reads the spool with Arrow, formats it with pandas a few blocks at a time
and writes it with Arrow's CSV writer (then hashes and maybe compresses it). Arrow's
reader and writer, hashlib, zlib and the file system release the GIL, so with the
reading and the writing on threads of their own the three stages overlap on the
machine's cores, while the rows stay in order and only a few blocks are in flight
(memory stays flat).

An error on either thread is raised on the caller's thread; an error on the caller's
thread (a cancel, a bad row) stops both threads before it propagates, and nothing more
is written.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")

_END = object()


class _Failed:
    def __init__(self, error: BaseException):
        self.error = error


def read_ahead(items: Iterable[T], depth: int) -> Iterator[T]:
    """Iterate `items` on a thread of its own, at most `depth` items ahead of the caller.

    What `items` raises is raised here. Use it in a `with contextlib.closing(...)` block:
    closing the iterator early stops the thread (after the item it is reading)."""
    ahead: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                ahead.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not offer(item):
                    return
            offer(_END)
        except BaseException as error:  # handed to the caller, who raises it
            offer(_Failed(error))

    thread = threading.Thread(target=produce, name="read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = ahead.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        thread.join()


class WriteBehind(Generic[T]):
    """Call `write(item)` on a thread of its own, in order, at most `depth` items behind
    the caller (`put` waits while the writer is that far behind).

    As a context manager: on a normal exit it waits until everything is written and
    raises the writer's error, if any; on an error in the block the items not yet
    written are dropped. After a failed write nothing more is written, and the error is
    raised at the next `put`."""

    def __init__(self, write: Callable[[T], object], depth: int):
        self._write = write
        self._behind: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._dropping = False
        self._thread = threading.Thread(target=self._run, name="write-behind", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._behind.get()) is not _END:
            if self._error is not None or self._dropping:
                continue  # keep taking items, so that the caller never waits on a dead writer
            try:
                self._write(item)
            except BaseException as error:
                self._error = error

    def put(self, item: T) -> None:
        self._raise_if_failed()
        self._behind.put(item)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def __enter__(self) -> WriteBehind[T]:
        return self

    def __exit__(self, error_type, _error, _traceback) -> None:
        if error_type is not None:
            self._dropping = True
        self._behind.put(_END)
        self._thread.join()
        if error_type is None:
            self._raise_if_failed()
