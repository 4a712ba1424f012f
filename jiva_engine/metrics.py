"""Prometheus text exposition (version 0.0.4), shared by the controller's API (`GET /metrics`)
and the replicas' and witnesses' optional `--metrics HOST:PORT` listener."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def label(v: str) -> str:
    """A label value escaped for the text format."""
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


class Exposition:
    """Collects metric families; `text()` is the exposition body."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def metric(
        self, mname: str, mtype: str, help_text: str, samples: list[tuple[str, float]]
    ) -> None:
        """One family: HELP, TYPE and a sample per (labels, value)."""
        lines = self.lines
        lines.append(f"# HELP {mname} {help_text}")
        lines.append(f"# TYPE {mname} {mtype}")
        for labels, value in samples:
            v = float(value)  # exact: byte counters and timestamps need more than %g's 6 digits
            lines.append(f"{mname}{{{labels}}} {int(v) if v.is_integer() else repr(v)}")

    def text(self) -> str:
        """The exposition body."""
        return "\n".join(self.lines) + "\n"


def response(text: str) -> web.Response:
    """A `GET /metrics` answer."""
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})


class MetricsServer:
    """A listener serving only `GET /metrics` from `render()` (replicas, witnesses)."""

    def __init__(self, render: Callable[[], str]) -> None:
        self.render = render
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self, host: str, port: int) -> None:
        """Listen on host:port (0: a free port, then see `port`); OSError when it cannot."""

        async def get_metrics(_request: web.Request) -> web.Response:
            return response(self.render())

        app = web.Application()
        app.router.add_get("/metrics", get_metrics)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, port, reuse_address=True)
        try:
            await site.start()
        except OSError:
            await self.runner.cleanup()
            self.runner = None
            raise
        sockets = getattr(site._server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else port

    async def stop(self) -> None:
        """Stop listening."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
