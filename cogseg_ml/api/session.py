"""One segmentation session per process: an async client on a long-lived background loop.

Every synchronous user of the API (:class:`~cogseg_ml.api.client.SegmentationClient`, the API
backend, the dataset and the labeler) talks to CDF through a :class:`SegmentationSession`: one
:class:`~cogseg_ml.api.client.AsyncSegmentationClient` living on one event loop in one daemon
thread. So a process has one connection pool, one token cache and one poll schedule per
configuration, however many sync calls and threads use it, and ``segment_many`` keeps many jobs
in flight without a thread or loop of its own per call.

Sessions are per process. :func:`session_for` hands out the process's session for a
configuration (and transport); after ``fork`` the child starts with none, so a DataLoader worker
never touches the parent's sockets, locks or loop (the inherited objects are abandoned, not
closed: closing them would reach into the parent's connections). Each user holds a lease
(:meth:`SegmentationSession.acquire` / :meth:`~SegmentationSession.release`); the session closes
its connections when the last lease is released, and at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

from cogseg_ml.api.async_client import AsyncSegmentationClient
from cogseg_ml.api.transport import ThreadedTransport, Transport, as_async_transport
from cogseg_ml.config import CdfConfig

__all__ = ["SegmentationSession", "ThreadedTransport", "session_for"]

_log = logging.getLogger("cogseg_ml.api.session")
T = TypeVar("T")
class SegmentationSession:
    """An :class:`AsyncSegmentationClient` on a background event loop, for sync callers.

    Started lazily (on first use), bound to the process that started it. Use
    :func:`session_for` rather than building one, so a process shares it.
    """

    def __init__(self, config: CdfConfig, transport: Transport | None = None) -> None:
        self.config = config
        self.transport = transport
        self.pid = os.getpid()
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._client: AsyncSegmentationClient | None = None
        self._leases = 0
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("running" if self._loop else "idle")
        return f"SegmentationSession(project={self.config.project!r}, {state})"

    # --- lifecycle -----------------------------------------------------------------------------
    def acquire(self) -> bool:
        """Take a lease (the session stays open while any is held); ``False`` if closed."""
        with self._lock:
            if self.closed:
                return False
            self._leases += 1
            return True

    def release(self) -> None:
        """Give a lease back; the last one closes the session."""
        with self._lock:
            self._leases = max(0, self._leases - 1)
            if self._leases or self.closed:
                return
            self.closed = True
        self._shutdown()

    @property
    def client(self) -> AsyncSegmentationClient:
        """The async client (started on first use; lives on the session's loop)."""
        self._ensure()
        assert self._client is not None
        return self._client

    def _ensure(self) -> asyncio.AbstractEventLoop:
        if os.getpid() != self.pid:
            raise RuntimeError("a SegmentationSession is bound to the process that made it; "
                               "use session_for() in this process")
        with self._lock:
            if self.closed:
                raise RuntimeError(f"{self!r} was closed")
            if self._loop is None:
                loop = asyncio.new_event_loop()
                thread = threading.Thread(target=loop.run_forever, daemon=True,
                                          name=f"cogseg-session-{self.config.project}")
                thread.start()
                self._loop, self._thread = loop, thread
                self._client = self._submit(self._new_client()).result()
            return self._loop

    async def _new_client(self) -> AsyncSegmentationClient:
        return AsyncSegmentationClient(self.config,
                                       transport=as_async_transport(self.transport))

    def _submit(self, coro: Coroutine[Any, Any, T]) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def close(self) -> None:
        """Close the client's connections and stop the loop (idempotent)."""
        with self._lock:
            if self.closed:
                return
            self.closed = True
        self._shutdown()

    def _shutdown(self) -> None:
        with self._lock:
            loop, thread, client = self._loop, self._thread, self._client
            self._loop = self._thread = self._client = None
        if loop is None or os.getpid() != self.pid:
            return
        try:
            if client is not None:
                asyncio.run_coroutine_threadsafe(client.aclose(), loop).result(timeout=10)
        except Exception as exc:  # closing must not mask what the caller is doing
            _log.debug("closing the session's client failed: %s", type(exc).__name__)
        loop.call_soon_threadsafe(loop.stop)
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=10)
        if not loop.is_running():
            loop.close()

    # --- running coroutines from sync code -----------------------------------------------------
    def run(self, fn: Callable[[AsyncSegmentationClient], Coroutine[Any, Any, T]]) -> T:
        """Run ``fn(client)`` on the session's loop and wait for its result.

        Interrupting the wait (Ctrl-C) cancels the coroutine.
        """
        loop = self._ensure()
        if threading.current_thread() is self._thread:
            raise RuntimeError("a sync SegmentationClient call was made from inside its own "
                               "session loop; await the AsyncSegmentationClient there instead")
        client = self.client
        fut = asyncio.run_coroutine_threadsafe(_boxed(fn(client)), loop)
        try:
            ok, value = fut.result()
        except BaseException:
            fut.cancel()
            raise
        if not ok:
            raise value
        return value  # type: ignore[no-any-return]

    def iterate(self, fn: Callable[[AsyncSegmentationClient], AsyncIterator[T]]
                ) -> Iterator[T]:
        """Iterate ``fn(client)`` (an async iterator on the session's loop) from sync code.

        Each item is produced on the loop and handed over when asked for, so an async
        producer that frees resources when its consumer resumes it keeps that meaning.
        Closing the iterator early closes the async one.
        """
        holder: dict[str, Any] = {}

        async def start(client: AsyncSegmentationClient) -> None:
            holder["it"] = fn(client)

        async def step(_: AsyncSegmentationClient) -> tuple[bool, Any]:
            holder["step"] = asyncio.current_task()
            try:
                return True, await holder["it"].__anext__()
            except StopAsyncIteration:
                return False, None

        async def stop(_: AsyncSegmentationClient) -> None:
            # A signal in the caller's thread cancels the step in flight without waiting for
            # it: let that cancellation land first, or aclose() finds the generator running.
            pending = holder.get("step")
            if pending is not None and not pending.done():
                pending.cancel()
                await asyncio.wait({pending})  # its outcome is not ours; our own cancel is
            aclose = getattr(holder["it"], "aclose", None)
            if aclose is not None:
                await aclose()

        self.run(start)
        finished = False
        try:
            while True:
                more, item = self.run(step)
                if not more:
                    finished = True
                    return
                yield item
        finally:
            if not finished and not self.closed:
                self.run(stop)


async def _boxed(coro: Coroutine[Any, Any, T]) -> tuple[bool, Any]:
    """Run ``coro``; a KeyboardInterrupt or SystemExit it raises (e.g. from a generator the
    caller handed in) is returned, to be raised in the caller's thread: escaping a task, it
    would stop the session's loop for every other user."""
    try:
        return True, await coro
    except (KeyboardInterrupt, SystemExit) as exc:
        return False, exc


# --- one session per process and configuration ------------------------------------------------

_SESSIONS: dict[tuple[CdfConfig, int], SegmentationSession] = {}
_REGISTRY_LOCK = threading.Lock()


def session_for(config: CdfConfig, transport: Transport | None = None) -> SegmentationSession:
    """This process's session for ``config`` (and ``transport``), with a lease taken.

    Release the lease with :meth:`SegmentationSession.release` when done.
    """
    key = (config, id(transport) if transport is not None else 0)
    with _REGISTRY_LOCK:
        session = _SESSIONS.get(key)
        if session is None or session.pid != os.getpid() or not session.acquire():
            session = SegmentationSession(config, transport)
            session.acquire()
            _SESSIONS[key] = session
        return session


def _forget_sessions_after_fork() -> None:
    """In a forked child: the parent's sessions (threads, sockets, locks) are not ours."""
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()
    _SESSIONS.clear()


def _close_all_at_exit() -> None:
    for session in list(_SESSIONS.values()):
        if session.pid == os.getpid():
            session.close()


os.register_at_fork(after_in_child=_forget_sessions_after_fork)
atexit.register(_close_all_at_exit)
