"""Running the KServe v2 app: uvicorn in the foreground (CLI) or in a thread (tests, benchmarks).

Owns process-level concerns: binding (127.0.0.1 unless told otherwise), polling the model
repository for new versions, and clean shutdown.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

from terarec.serving.app import create_app
from terarec.serving.repository import Loader, ModelRepository, default_loader
from terarec.utils.imports import require


class _Poller(threading.Thread):
    def __init__(self, repository: ModelRepository, interval_s: float) -> None:
        super().__init__(name="terarec-repo-poll", daemon=True)
        self.repository, self.interval_s = repository, interval_s
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            self.repository.poll()


class ServerThread:
    """A uvicorn server in a background thread; use as a context manager.

    Args:
        repository: a ``ModelRepository`` or its folder.
        host: bind address (default loopback only).
        port: 0 picks a free port (read it from ``.port`` after start).
        poll_interval_s: check the repository for new versions this often (0: never).
        loader: how a version folder becomes a backend (tests inject a tiny network).
        ps_json: the HPS ``ps.json`` of HugeCTR Triton model folders (``terarec serve --ps``).
        **app_kwargs: ``max_batch_size``, ``max_delay_s``, ``max_request_bytes``.
    """

    def __init__(self, repository: ModelRepository | str | Path, host: str = "127.0.0.1",
                 port: int = 0, poll_interval_s: float = 0.0, loader: Loader = default_loader,
                 ps_json: str | Path | None = None, **app_kwargs: Any) -> None:
        uvicorn = require("uvicorn", extra="serve", feature="terarec serve")
        if not isinstance(repository, ModelRepository):
            repository = ModelRepository(repository, loader, ps_json=ps_json)
        self.repository = repository
        repository.poll()
        self.app = create_app(repository, **app_kwargs)
        self.config = uvicorn.Config(self.app, host=host, port=port, log_level="warning",
                                     access_log=False, lifespan="off")
        self.server = uvicorn.Server(self.config)
        self._thread = threading.Thread(target=self.server.run, name="terarec-serve",
                                        daemon=True)
        self._poller = _Poller(repository, poll_interval_s) if poll_interval_s > 0 else None
        self.host, self.port = host, port

    def start(self, timeout_s: float = 30.0) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + timeout_s
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("terarec serve did not start")
            time.sleep(0.01)
        sock = self.server.servers[0].sockets[0]
        self.port = int(sock.getsockname()[1])
        if self._poller is not None:
            self._poller.start()
        return self

    @property
    def url(self) -> str:
        return f"{self.host}:{self.port}"

    def stop(self) -> None:
        if self._poller is not None:
            self._poller.stop.set()
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(timeout=15)
        self.repository.close()

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def serve(model_repository: str | Path, host: str = "127.0.0.1", port: int = 8000,
          poll_interval_s: float = 5.0, ps_json: str | Path | None = None,
          **app_kwargs: Any) -> None:
    """Serve ``model_repository`` until interrupted (``terarec serve``); ``ps_json`` is the HPS
    config of HugeCTR Triton model folders (``--ps``)."""
    uvicorn = require("uvicorn", extra="serve", feature="terarec serve")
    repository = ModelRepository(model_repository, ps_json=ps_json)
    loaded = repository.poll()
    print(f"terarec serve: loaded {loaded or 'no models'}; errors: {repository.errors or 'none'}")
    poller = _Poller(repository, poll_interval_s) if poll_interval_s > 0 else None
    if poller is not None:
        poller.start()
    try:
        uvicorn.run(create_app(repository, **app_kwargs), host=host, port=port,
                    log_level="info", lifespan="off")
    finally:
        if poller is not None:
            poller.stop.set()
        repository.close()
