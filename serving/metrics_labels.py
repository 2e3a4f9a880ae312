"""Bounded ``endpoint`` labels for BentoML's HTTP traffic metrics on ``/metrics``.

BentoML 1.4 labels ``bentoml_service_request_*`` with the raw request path
(``RunnerTrafficMetricsMiddleware``: ``endpoint = scope["path"]``), so every distinct URL, 404s
included, becomes new Prometheus series that live until the server stops: a scanner or one
``/ui/accounts/<id>`` page per account grows ``/metrics`` without bound (scrape size, scrape time
and worker memory). BentoML has no setting for the label, and middlewares a service adds run
*inside* its metrics middleware (after the label is taken), so the only place to change it is the
middleware class itself: ``install_route_labels`` replaces it with a wrapper that hands it a copy
of the request whose path is the matched route template (``/ui/accounts/{account_id:str}``), or
``other`` when no route matches. Everything else BentoML records (status codes, durations,
requests in progress, timeouts and overload answers) is unchanged, because its own middleware still
does the recording, at the same place in the stack.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Iterator, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from starlette.routing import BaseRoute, Mount, compile_path

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UNMATCHED = "other"
"""Label of requests no route answers (404s): one series per status code, whatever the path."""

_ORIGINAL_SCOPE = "revcast.original_scope"


@dataclass(frozen=True)
class RouteTemplate:
    """One route of the application, flattened to its full path.

    Attributes:
        template: The route's path with the mounts' prefixes (``/ui/accounts/{account_id:str}``).
        regex: Starlette's compiled pattern of that path.
        methods: HTTP methods the route answers; None: any.
    """

    template: str
    regex: re.Pattern[str]
    methods: frozenset[str] | None

    @classmethod
    def of(cls, template: str, methods: Any = None) -> RouteTemplate:
        """Compile ``template`` the way Starlette compiles route paths."""
        regex = compile_path(template)[0]
        return cls(template, regex, None if methods is None else frozenset(methods))


def _route_paths(route: BaseRoute) -> Iterator[tuple[str, Any]]:
    """``(path, methods)`` of a route that is not a mount."""
    path = getattr(route, "path", None)
    if isinstance(path, str):
        yield path, getattr(route, "methods", None)
        return
    # FastAPI (0.16x) keeps an included router as one opaque route without a path; the function
    # its OpenAPI builder lists routes with unfolds it.
    try:
        from fastapi.routing import iter_route_contexts
    except ImportError:
        return
    for context in iter_route_contexts([route]):
        if isinstance(context.path, str):
            yield context.path, context.methods


def route_table(routes: Sequence[BaseRoute], prefix: str = "") -> list[RouteTemplate]:
    """Every route of an application with its full path, in the router's order.

    Mounts are unfolded into the mounted application's routes (a FastAPI or Starlette app mounted at
    ``/v1`` gives ``/v1/<its routes>``); a mounted app without routes (static files) stands as
    ``<mount>/{path:path}``. Routes without a path (host routes) are left out: their requests get
    ``other``.

    Args:
        routes: The application's routes (``app.routes``).
        prefix: Path of the mount they are under.

    Returns:
        The table ``endpoint_label`` matches requests against.
    """
    table: list[RouteTemplate] = []
    for route in routes:
        if isinstance(route, Mount):
            inner = getattr(route.app, "routes", None)
            if inner is None:
                table.append(RouteTemplate.of(f"{prefix}{route.path}/{{path:path}}"))
            else:
                table.extend(route_table(inner, prefix + route.path))
            continue
        table.extend(RouteTemplate.of(prefix + path, methods) for path, methods in _route_paths(route))
    return table


def endpoint_label(table: Sequence[RouteTemplate], path: str, method: str | None) -> str:
    """The ``endpoint`` label of a request: the template of the route it reaches, else ``other``.

    As in Starlette's router, the first route matching path and method wins, else the first one
    matching the path only (it answers 405: still a known route).

    Args:
        table: ``route_table`` of the application.
        path: The request's path below the application's root path.
        method: The request's HTTP method (None for websockets).

    Returns:
        A route template, or ``other``.
    """
    partial: str | None = None
    for route in table:
        if route.regex.match(path) is None:
            continue
        if route.methods is None or method is None or method in route.methods:
            return route.template
        if partial is None:
            partial = route.template
    return partial or UNMATCHED


def _route_path(scope: Scope) -> str:
    """The request's path below the root path a proxy serves the application under, as routed."""
    path, root = scope["path"], scope.get("root_path", "")
    if root and path.startswith(root) and path[len(root) : len(root) + 1] in ("", "/"):
        return path[len(root) :] or "/"
    return path


class RouteLabelledTrafficMetrics:
    """Stands in for BentoML's traffic metrics middleware and lets it see route templates as paths.

    Built by Starlette with the same arguments as the middleware it wraps (``wrapped``, set by
    ``install_route_labels``). The wrapped middleware receives a copy of the scope whose ``path`` is
    the request's ``endpoint_label``; the application behind it receives the original scope, so
    routing and the handlers are unaffected.

    Attributes:
        wrapped: BentoML's middleware class (``RunnerTrafficMetricsMiddleware``).
    """

    wrapped: ClassVar[Callable[..., ASGIApp] | None] = None

    def __init__(self, app: ASGIApp, *args: Any, **kwargs: Any) -> None:
        if self.wrapped is None:
            raise RuntimeError("RouteLabelledTrafficMetrics is used before install_route_labels()")
        self.app = app
        self._metrics = self.wrapped(self._call_app, *args, **kwargs)
        # The routes of the application this middleware serves, flattened on its first request
        # (they are all declared by then): ``scope["app"]``, set by Starlette before its middlewares.
        self._table: list[RouteTemplate] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Record the request under its route template; the application sees the real request."""
        if scope["type"] not in ("http", "websocket") or scope["path"] == "/metrics":
            await self._metrics(scope, receive, send)
            return
        if self._table is None:
            self._table = route_table(getattr(scope.get("app"), "routes", []))
        label = endpoint_label(self._table, _route_path(scope), scope.get("method"))
        await self._metrics({**scope, "path": label, _ORIGINAL_SCOPE: scope}, receive, send)

    async def _call_app(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.app(scope.get(_ORIGINAL_SCOPE, scope), receive, send)


def install_route_labels() -> None:
    """Make BentoML label its HTTP metrics by route template in this process (idempotent).

    Must run before BentoML builds the service's ASGI application: BentoML's worker imports the
    service module and then builds it, with no hook in between, so the service module calls this
    at import. It affects every BentoML service built in the process afterwards.
    """
    from bentoml._internal.server.http import instruments

    current = instruments.RunnerTrafficMetricsMiddleware
    if current is RouteLabelledTrafficMetrics:
        return
    RouteLabelledTrafficMetrics.wrapped = current
    instruments.RunnerTrafficMetricsMiddleware = RouteLabelledTrafficMetrics  # type: ignore[misc,assignment]
