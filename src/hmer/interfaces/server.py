"""Running the application of :func:`hmer.interfaces.api.create_app` with uvicorn: what
``hmer serve`` and the load benchmark share."""

from __future__ import annotations

from typing import Any


def serve_app(app: Any, host: str, port: int, limit_concurrency: int | None = None) -> None:
    """Run ``app`` (from ``create_app``) with uvicorn until SIGINT or SIGTERM.

    On the signal, running recognitions are called off (they stop at their next step), queued
    ones get 503, and connections still open after 2 s are dropped: the server exits within
    seconds whatever it was doing. ``limit_concurrency`` caps connections (uvicorn answers 503
    beyond).
    """
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame) -> None:
            app.state.stop_work()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=2,
        limit_concurrency=limit_concurrency,
    )
    Server(config).run()
