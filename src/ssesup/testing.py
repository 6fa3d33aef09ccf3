"""Testing SSE endpoints: read a Starlette or FastAPI app's event stream in-process, or serve it on a real
uvicorn for tests that need sockets.

Owns: the public names of testing (the in-process client of ``ssesup.inprocess``: :class:`AsyncSSEClient`
and its blocking form :class:`SSEClient`, on an anyio portal thread; the events it read, parsed by
``ssesup.parser`` as an ``EventSource`` parses them), :func:`serve` (uvicorn in a thread on 127.0.0.1,
on a port the OS picks) and the ``sse_server`` pytest fixture. Does not own: anything a stream does.
The module imports neither pytest nor uvicorn when loaded.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from functools import partial
from typing import TYPE_CHECKING, Any

from anyio.from_thread import BlockingPortal, start_blocking_portal
from starlette.types import ASGIApp

from ssesup.inprocess import (
    AsyncSSEClient,
    AsyncSSEConnection,
    HeaderItems,
    Params,
    SSEResponse,
    StreamIncomplete,
)
from ssesup.parser import EventStreamParser, ServerSentEvent

if TYPE_CHECKING:
    import pytest

__all__ = [
    "AsyncSSEClient",
    "AsyncSSEConnection",
    "EventStreamParser",
    "LiveServer",
    "SSEClient",
    "SSEConnection",
    "SSEResponse",
    "ServerSentEvent",
    "StreamIncomplete",
    "serve",
]

# -- the blocking form ----------------------------------------------------------------------------------


class SSEClient:
    """:class:`AsyncSSEClient` for plain (sync) tests: the app runs on an event loop in a thread of its
    own (an anyio blocking portal, as Starlette's ``TestClient`` does), ``backend`` ``"asyncio"`` or
    ``"trio"``. Used in ``with``, one loop serves every call (and the lifespan runs); used without,
    each call starts one. ``call(fn)`` runs ``fn`` on that loop (a supervisor's ``drain``, say)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        backend: str = "asyncio",
        backend_options: dict[str, Any] | None = None,
        base_url: str = "http://testserver",
        headers: HeaderItems | None = None,
        lifespan: bool = False,
        timeout: float = 5.0,
        close_timeout: float = 10.0,
        client: tuple[str, int] = ("127.0.0.1", 50000),
        raise_app_exceptions: bool = True,
    ) -> None:
        self.backend = backend
        self.backend_options = backend_options
        self.async_client = AsyncSSEClient(
            app,
            base_url=base_url,
            headers=headers,
            lifespan=lifespan,
            timeout=timeout,
            close_timeout=close_timeout,
            client=client,
            raise_app_exceptions=raise_app_exceptions,
        )
        self._portal: BlockingPortal | None = None
        self._exit_stack = contextlib.ExitStack()

    def __enter__(self) -> SSEClient:
        with contextlib.ExitStack() as stack:
            self._portal = stack.enter_context(start_blocking_portal(self.backend, self.backend_options))
            stack.enter_context(self._portal.wrap_async_context_manager(self.async_client))
            self._exit_stack = stack.pop_all()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        try:
            self._exit_stack.__exit__(*exc_info)
        finally:
            self._portal = None

    @contextlib.contextmanager
    def _loop(self) -> Iterator[BlockingPortal]:
        if self._portal is not None:
            yield self._portal
            return
        with start_blocking_portal(self.backend, self.backend_options) as portal:
            yield portal

    def stream(
        self,
        path: str,
        *,
        count: int | None = None,
        until: Callable[[ServerSentEvent], bool] | None = None,
        timeout: float | None = None,
        params: Params | None = None,
        headers: HeaderItems | None = None,
        last_event_id: str | None = None,
    ) -> SSEResponse:
        """As :meth:`AsyncSSEClient.stream`."""
        read = partial(
            self.async_client.stream,
            path,
            count=count,
            until=until,
            timeout=timeout,
            params=params,
            headers=headers,
            last_event_id=last_event_id,
        )
        with self._loop() as portal:
            return portal.call(read)

    @contextlib.contextmanager
    def connect(
        self,
        path: str,
        *,
        params: Params | None = None,
        headers: HeaderItems | None = None,
        last_event_id: str | None = None,
    ) -> Iterator[SSEConnection]:
        """As :meth:`AsyncSSEClient.connect`, in ``with``."""
        with self._loop() as portal:
            connection = self.async_client.connect(path, params=params, headers=headers, last_event_id=last_event_id)
            with portal.wrap_async_context_manager(connection):
                yield SSEConnection(connection, portal)

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(*args)`` on the client's event loop (awaited if it is async); needs ``with``."""
        if self._portal is None:
            raise RuntimeError("call() runs on the client's loop, which lives while the client is in `with`")
        return self._portal.call(fn, *args)


class SSEConnection:
    """:class:`AsyncSSEConnection` for sync tests (from :meth:`SSEClient.connect`)."""

    def __init__(self, connection: AsyncSSEConnection, portal: BlockingPortal) -> None:
        self._connection = connection
        self._portal = portal

    @property
    def response(self) -> SSEResponse:
        return self._connection.response

    def read(
        self,
        *,
        count: int | None = None,
        until: Callable[[ServerSentEvent], bool] | None = None,
        timeout: float | None = None,
    ) -> list[ServerSentEvent]:
        """As :meth:`AsyncSSEConnection.read`."""
        return self._portal.call(partial(self._connection.read, count=count, until=until, timeout=timeout))

    def next_event(self, timeout: float | None = None) -> ServerSentEvent:
        return self._portal.call(self._connection.next_event, timeout)

    def __iter__(self) -> Iterator[ServerSentEvent]:
        """Every event until the body ends (each within the client's timeout)."""
        while True:
            try:
                yield self.next_event()
            except StreamIncomplete:
                if self.response.ended:
                    return
                raise

    def disconnect(self) -> None:
        self._portal.call(self._connection.disconnect)


# -- a real server --------------------------------------------------------------------------------------


class LiveServer:
    """uvicorn serving an app in a thread of its own, on 127.0.0.1: ``url`` is its base URL."""

    def __init__(self, app: ASGIApp, config: dict[str, Any]) -> None:
        try:
            import uvicorn
        except ModuleNotFoundError as missing:
            raise ModuleNotFoundError(
                "ssesup.testing.serve needs uvicorn: pip install 'ssesup[uvicorn]'", name=missing.name
            ) from missing
        import socket

        config.setdefault("log_level", "warning")
        config.setdefault("timeout_graceful_shutdown", 5)
        self._socket = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind(("127.0.0.1", 0))  # the OS picks a free port: no race with other tests
        self._socket.listen(1024)
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, **config))
        self._loop: Any = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"uvicorn:{self.port}", daemon=True)

    def _run(self) -> None:
        import asyncio

        async def run() -> None:
            self._loop = asyncio.get_running_loop()
            await self.server.serve(sockets=[self._socket])

        try:
            asyncio.run(run())
        except BaseException as exc:  # reported by start() or stop(): a thread cannot raise to the test
            self._error = exc

    def start(self, timeout: float = 10.0) -> None:
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"uvicorn did not start within {timeout:g} s") from self._error
            time.sleep(0.01)

    def stop(self, timeout: float = 15.0) -> None:
        self.server.should_exit = True
        self._thread.join(timeout)
        self._socket.close()
        if self._thread.is_alive():
            raise RuntimeError(f"uvicorn did not stop within {timeout:g} s")

    def call(self, fn: Callable[..., Any], *args: Any, timeout: float = 30.0) -> Any:
        """Run ``fn(*args)`` on the server's event loop (awaited if it is async) and return its result:
        ``server.call(supervisor.drain)`` drains the streams this server holds."""
        import asyncio
        import inspect

        async def run() -> Any:
            result = fn(*args)
            return await result if inspect.isawaitable(result) else result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)


@contextlib.contextmanager
def serve(app: ASGIApp, **config: Any) -> Iterator[LiveServer]:
    """Serve ``app`` on uvicorn (``config``: ``uvicorn.Config`` options) on 127.0.0.1 on a free port
    while in ``with``; stops it after (open streams get ``timeout_graceful_shutdown``, 5 s by default)."""
    server = LiveServer(app, config)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def pytest_configure(config: pytest.Config) -> None:
    """pytest's hook, for ``pytest_plugins = ["ssesup.testing"]``: adds the ``sse_server`` fixture."""
    import pytest

    class _Fixtures:
        @pytest.fixture
        def sse_server(self) -> Iterable[Callable[..., LiveServer]]:
            """``sse_server(app, **uvicorn_config)`` serves ``app`` on a real uvicorn on 127.0.0.1 and
            returns the :class:`LiveServer` (``.url``); every server is stopped after the test."""
            with contextlib.ExitStack() as stack:
                yield lambda app, **options: stack.enter_context(serve(app, **options))

    if not config.pluginmanager.has_plugin("ssesup.testing.fixtures"):
        config.pluginmanager.register(_Fixtures(), "ssesup.testing.fixtures")
