"""How a user's httpx transport reaches the async client: a synchronous transport (a proxy, a
recorder) runs its requests in threads (:class:`ThreadedTransport`)."""

from __future__ import annotations

import asyncio

import httpx

__all__ = ["ThreadedTransport", "Transport", "as_async_transport"]

Transport = httpx.BaseTransport | httpx.AsyncBaseTransport


class ThreadedTransport(httpx.AsyncBaseTransport):
    """A synchronous httpx transport used from async code: each request runs in a thread.

    Lets a user's sync-only transport (a proxy, a recorder) serve the session's async client.
    """

    def __init__(self, transport: httpx.BaseTransport) -> None:
        self.transport = transport

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send through the sync transport off the loop; the body is read there too."""
        def send() -> httpx.Response:
            resp = self.transport.handle_request(request)
            try:
                content = b"".join(resp.stream)  # type: ignore[arg-type]
            finally:
                resp.close()
            return httpx.Response(resp.status_code, headers=resp.headers, content=content,
                                  extensions=resp.extensions)

        return await asyncio.to_thread(send)

    async def aclose(self) -> None:
        """Close the wrapped transport."""
        await asyncio.to_thread(self.transport.close)


def as_async_transport(transport: Transport | None) -> httpx.AsyncBaseTransport | None:
    """The transport as the async client needs it (sync ones run in threads)."""
    if transport is None or isinstance(transport, httpx.AsyncBaseTransport):
        return transport
    return ThreadedTransport(transport)
