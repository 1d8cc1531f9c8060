"""uvicorn in a background thread with its own event loop, so /health and /ready answer while the
main thread runs the startup phases."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import uvicorn

from glowplug_worker.serve.http.admission import Scheduler
from glowplug_worker.serve.http.app import Service, build_app
from glowplug_worker.serve.metrics import Metrics
from glowplug_worker.serve.startup.state import StartupState

START_TIMEOUT_SECONDS = 30.0


class ThreadedServer(uvicorn.Server):
    """A uvicorn server that runs in its own thread and event loop (`loop`, once started)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.thread = threading.Thread(target=self._run, name="http", daemon=True)
        self._up = threading.Event()
        self._errors: list[BaseException] = []

    def start(self, timeout: float = START_TIMEOUT_SECONDS) -> None:
        """Start serving; raises OSError when the server does not come up (port in use...)."""
        self.thread.start()
        self._up.wait(timeout)
        if self._errors or not self.started:
            config = self.config
            problem = self._errors[0] if self._errors else "server did not start"
            raise OSError(f"could not serve HTTP on {config.host}:{config.port}: {problem}")

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._serve_and_signal())
        except BaseException as exc:
            self._errors.append(exc)
        finally:
            self._up.set()
            loop.close()

    async def _serve_and_signal(self) -> None:
        task = asyncio.ensure_future(self.serve())
        while not self.started and not task.done():
            await asyncio.sleep(0.01)
        self._up.set()
        await task
        if self.started is False and not task.cancelled() and (error := task.exception()):
            raise error


class Http:
    """The HTTP side of a `serve` process: the app's service and the server running it."""

    def __init__(self, server: ThreadedServer, service: Service) -> None:
        self.server, self.service = server, service

    def drain(self, grace: float) -> bool:
        """Wait up to `grace` seconds for the requests in flight; False when some remain."""
        loop = self.server.loop
        if loop is None:
            return True
        future = asyncio.run_coroutine_threadsafe(self.service.scheduler.wait_idle(grace), loop)
        try:
            return bool(future.result(grace + 1))
        except Exception:
            return False

    def stop(self) -> None:
        self.server.should_exit = True
        self.server.thread.join(10)
        if self.service.pool is not None:
            self.service.pool.shutdown(wait=False, cancel_futures=True)


def start_http(
    state: StartupState,
    *,
    host: str,
    port: int,
    active_flags: tuple[str, ...],
    max_concurrency: int,
    max_queue: int,
    model_name: str,
    task: str,
    request_timeout: float,
) -> Http:
    metrics = Metrics()
    for name in active_flags:
        metrics.optimization.labels(name).set(1)
    service = Service(
        state=state,
        metrics=metrics,
        scheduler=Scheduler(max_concurrency, max_queue),
        model_name=model_name,
        task=task,
        request_timeout=request_timeout,
        pool=ThreadPoolExecutor(max_concurrency, thread_name_prefix="model"),
    )
    config = uvicorn.Config(
        build_app(service),
        host=host,
        port=port,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=5,
    )
    server = ThreadedServer(config)
    server.start()
    return Http(server, service)
