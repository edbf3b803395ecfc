"""Per-request query accounting for WSGI and ASGI applications: a scope, a header, a warning.

``WSGIMiddleware(app)`` and ``ASGIMiddleware(app)`` open a
:func:`querymeter.scope` for each HTTP request, tagged ``method`` and
``route``, add a ``Server-Timing: db;dur=<ms>;desc="<n> queries"`` header
with the figures of the request so far when its response starts, and, when
asked, log the N+1 pattern once the response has ended.  They never buffer a
body, never change one, and never raise into the application: a fault of
their own is reported through ``querymeter._faults`` and the request goes on.

The route is known only once the framework has routed the request, inside
the application: the scope opens with ``route`` set to the request's path, and
takes the framework's route when the response starts (and again when it ends).
Werkzeug (Flask) leaves its request in the WSGI environ, Starlette and FastAPI
leave the matched route in the ASGI scope; Django says it through
:class:`DjangoRouteMiddleware`; any framework can put the route in
``environ[ROUTE_KEY]`` or ``scope[ROUTE_KEY]``.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

from . import _faults
from .scopes import Scope, current_scope, scope

__all__ = ["ROUTE_KEY", "ASGIMiddleware", "DjangoRouteMiddleware", "WSGIMiddleware"]

logger = logging.getLogger("querymeter.middleware")

#: The key of the WSGI environ or the ASGI scope where an application may name its route.
ROUTE_KEY = "querymeter.route"

# One request's warning names at most this many statements (the worst first).
_MAX_WARNED = 10

# Loose on purpose: each framework and server types these its own way (dicts,
# mappings, protocols); the middleware passes them on as they are.
StartResponse = Callable[..., Any]
WSGIApp = Callable[[Any, Any], Iterable[bytes]]
ASGIReceive = Callable[[], Awaitable[Any]]
ASGISend = Callable[[Any], Awaitable[Any]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[Any]]


def _checked_options(app: object, n_plus_one: object) -> None:
    if not callable(app):
        raise TypeError(f"app must be a callable application, not {type(app).__name__}")
    if isinstance(n_plus_one, bool) or not isinstance(n_plus_one, int):
        raise TypeError(f"n_plus_one must be an int, not {type(n_plus_one).__name__}")
    if n_plus_one < 1:
        raise ValueError(f"n_plus_one must be at least 1, not {n_plus_one}")


class _Request:
    """One request's scope, and what the middleware has learned of its route."""

    __slots__ = ("method", "path", "scope")

    def __init__(self, method: str, path: str, opened: Scope) -> None:
        self.method = method
        self.path = path
        self.scope = opened

    def name_route(self, route: str | None) -> None:
        # The scope's tags are fixed when it opens, before the framework routes
        # the request; the route replaces the path from the moment it is known.
        if route is not None and self.scope.tags.get("route") != route:
            self.scope.retag(route=route)

    def server_timing(self) -> str:
        """The Server-Timing entry of the figures so far: DB time in ms, and the queries."""
        figures = self.scope
        return f'db;dur={figures.db_ns / 1_000_000:.3f};desc="{figures.queries} queries"'

    def close(self, warn_n_plus_one: bool) -> None:
        """End the scope; then name the N+1 pattern, if asked.  Never raises an Exception."""
        try:
            self.scope.__exit__(None, None, None)
        except Exception as exc:  # noqa: BLE001 - ours: the request has its response
            _faults.report("middleware: could not close a request's scope", exc)
            return
        if not warn_n_plus_one:
            return
        try:
            repeated = sorted(self.scope.repeated.items(), key=lambda item: (-item[1], item[0]))
            route = self.scope.tags.get("route", self.path)
            for fingerprint, count in repeated[:_MAX_WARNED]:
                logger.warning(
                    "N+1 pattern in %s %s: %d runs of %s (more than n_plus_one=%d)",
                    self.method,
                    route,
                    count,
                    fingerprint,
                    self.scope.n_plus_one,
                )
            if len(repeated) > _MAX_WARNED:
                logger.warning(
                    "N+1 pattern in %s %s: %d more statements ran more than n_plus_one=%d times",
                    self.method,
                    route,
                    len(repeated) - _MAX_WARNED,
                    self.scope.n_plus_one,
                )
        except Exception as exc:  # noqa: BLE001 - ours: the request has ended
            _faults.report("middleware: could not name a request's N+1 pattern", exc)


def _open(method: object, path: object, n_plus_one: int) -> _Request | None:
    """A request's scope, entered in the running context; None (reported) if it cannot be."""
    try:
        method_tag = method if isinstance(method, str) else "?"
        path_tag = path if isinstance(path, str) else "?"
        opened = scope(n_plus_one=n_plus_one, method=method_tag, route=path_tag)
        opened.__enter__()
        return _Request(method_tag, path_tag, opened)
    except Exception as exc:  # noqa: BLE001 - ours: the request goes on uncounted
        _faults.report("middleware: could not open a request's scope", exc)
        return None


def _route_in_environ(environ: dict[str, Any]) -> str | None:
    """The route an application named in the environ, or werkzeug's URL rule, or None."""
    route = environ.get(ROUTE_KEY)
    if isinstance(route, str):
        return route
    # Werkzeug's Request (Flask's) puts itself in the environ; url_rule is set by routing.
    rule = getattr(getattr(environ.get("werkzeug.request"), "url_rule", None), "rule", None)
    return rule if isinstance(rule, str) else None


def _route_in_scope(asgi_scope: MutableMapping[str, Any]) -> str | None:
    """The route an application named in the ASGI scope, or Starlette's route's path, or None."""
    route = asgi_scope.get(ROUTE_KEY)
    if isinstance(route, str):
        return route
    # Starlette's router (FastAPI's) puts the route it matched in the scope it was given.
    route = asgi_scope.get("route")
    if isinstance(route, str):
        return route
    path_format = getattr(route, "path_format", None)
    return path_format if isinstance(path_format, str) else None


class WSGIMiddleware:
    """Wraps a WSGI application: a scope per request, a Server-Timing header, N+1 warnings.

    ``server_timing``: add the header when the response starts.  ``warn_n_plus_one``:
    log each statement that ran more than ``n_plus_one`` times in one request,
    on the ``querymeter.middleware`` logger, once the response has ended.
    """

    def __init__(
        self,
        app: WSGIApp,
        *,
        server_timing: bool = True,
        warn_n_plus_one: bool = False,
        n_plus_one: int = 5,
    ) -> None:
        _checked_options(app, n_plus_one)
        self.app = app
        self.server_timing = bool(server_timing)
        self.warn_n_plus_one = bool(warn_n_plus_one)
        self.n_plus_one = n_plus_one

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        # Each request runs in a context of its own: the scope is left open while
        # the server iterates the body, and the thread's context never keeps it,
        # even if the server forgets close() or closes from another thread.
        context = contextvars.copy_context()
        request = context.run(
            _open, environ.get("REQUEST_METHOD"), environ.get("PATH_INFO"), self.n_plus_one
        )
        if request is None:
            return self.app(environ, start_response)

        def counted_start_response(
            status: str, headers: list[tuple[str, str]], *exc_info: Any
        ) -> Any:
            try:
                request.name_route(_route_in_environ(environ))
                if self.server_timing:
                    headers = [*headers, ("Server-Timing", request.server_timing())]
            except Exception as exc:  # noqa: BLE001 - ours: the response goes on without it
                _faults.report("middleware: could not add the Server-Timing header", exc)
            return start_response(status, headers, *exc_info)

        try:
            body = context.run(self.app, environ, counted_start_response)
        except BaseException:
            context.run(self._close, request, environ)
            raise
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(body, file_wrapper):
            # The server sends a file wrapper's file itself (sendfile): it must get
            # it as it is.  Its body runs no query.
            context.run(self._close, request, environ)
            return body
        # Some servers ask for len() wherever the attribute exists (waitress does):
        # the wrapper has one only where the body has.
        wrapper = _SizedBody if hasattr(body, "__len__") else _Body
        return wrapper(body, context, lambda: self._close(request, environ))

    def _close(self, request: _Request, environ: dict[str, Any]) -> None:
        try:
            request.name_route(_route_in_environ(environ))
        except Exception as exc:  # noqa: BLE001 - ours: the scope closes all the same
            _faults.report("middleware: could not read the request's route", exc)
        request.close(self.warn_n_plus_one)


class _Body:
    """A WSGI body passed through chunk by chunk, in the request's context; close() ends it."""

    __slots__ = ("_body", "_close", "_context", "_iterator")

    def __init__(
        self, body: Iterable[bytes], context: contextvars.Context, close: Callable[[], None]
    ) -> None:
        self._body = body
        self._context = context
        self._close: Callable[[], None] | None = close
        self._iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self._iterator is None:
            self._iterator = self._context.run(iter, self._body)
        return self._context.run(next, self._iterator)

    def close(self) -> None:
        close, self._close = self._close, None
        if close is None:
            return
        try:
            body_close = getattr(self._body, "close", None)
            if body_close is not None:
                self._context.run(body_close)
        finally:
            self._context.run(close)


class _SizedBody(_Body):
    """A body that has a length, keeping it: servers set Content-Length from a body of one chunk."""

    __slots__ = ()

    def __len__(self) -> int:
        return len(self._body)  # type: ignore[arg-type]


class ASGIMiddleware:
    """Wraps an ASGI application: a scope per HTTP request, a Server-Timing header, N+1 warnings.

    The options are :class:`WSGIMiddleware`'s.  Lifespan and websocket
    connections pass through without a scope.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        server_timing: bool = True,
        warn_n_plus_one: bool = False,
        n_plus_one: int = 5,
    ) -> None:
        _checked_options(app, n_plus_one)
        self.app = app
        self.server_timing = bool(server_timing)
        self.warn_n_plus_one = bool(warn_n_plus_one)
        self.n_plus_one = n_plus_one

    async def __call__(
        self, asgi_scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend
    ) -> None:
        if asgi_scope.get("type") != "http":
            await self.app(asgi_scope, receive, send)
            return
        # Entered and exited in this coroutine: the application runs in its context.
        request = _open(asgi_scope.get("method"), asgi_scope.get("path"), self.n_plus_one)
        if request is None:
            await self.app(asgi_scope, receive, send)
            return

        async def counted_send(message: MutableMapping[str, Any]) -> None:
            if message.get("type") == "http.response.start":
                try:
                    request.name_route(_route_in_scope(asgi_scope))
                    if self.server_timing:
                        entry = (b"server-timing", request.server_timing().encode("latin-1"))
                        message = {**message, "headers": [*message.get("headers", ()), entry]}
                except Exception as exc:  # noqa: BLE001 - ours: the response goes on without it
                    _faults.report("middleware: could not add the Server-Timing header", exc)
            await send(message)

        try:
            await self.app(asgi_scope, receive, counted_send)
        finally:
            try:
                request.name_route(_route_in_scope(asgi_scope))
            except Exception as exc:  # noqa: BLE001 - ours: the scope closes all the same
                _faults.report("middleware: could not read the request's route", exc)
            request.close(self.warn_n_plus_one)


class DjangoRouteMiddleware:
    """A Django middleware that tells :class:`WSGIMiddleware` and :class:`ASGIMiddleware`
    the route Django resolved (``request.resolver_match.route``, such as ``users/<int:id>``).

    Add ``"querymeter.middleware.DjangoRouteMiddleware"`` to ``MIDDLEWARE``, anywhere
    in the list.  It works in both of Django's modes: in an async stack it adds no
    thread hop.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        # asgiref comes with Django; Django reads the mark to call us as a coroutine.
        from asgiref.sync import iscoroutinefunction, markcoroutinefunction

        self.get_response = get_response
        self._is_async = iscoroutinefunction(get_response)
        if self._is_async:
            markcoroutinefunction(self)

    def __call__(self, request: Any) -> Any:
        if self._is_async:
            return self._async_call(request)
        try:
            return self.get_response(request)
        finally:
            # Django has resolved the URL by now, and not yet started the response.
            _name_django_route(request)

    async def _async_call(self, request: Any) -> Any:
        try:
            return await self.get_response(request)
        finally:
            _name_django_route(request)

    def process_view(self, request: Any, *args: Any) -> None:
        """Django has resolved the URL and not yet called the view: the request's scope
        gets its route now, so that the view's queries carry it (and a profiling
        session focused on the route sees them)."""
        route = getattr(getattr(request, "resolver_match", None), "route", None)
        scope = current_scope()
        if isinstance(route, str) and route and scope is not None:
            try:
                scope.retag(route=route)
            except Exception as exc:  # noqa: BLE001 - ours: the view goes on
                _faults.report("middleware: could not tag a scope with Django's route", exc)


def _name_django_route(request: Any) -> None:
    """Put the route Django resolved for the request where the middleware reads it."""
    try:
        route = getattr(getattr(request, "resolver_match", None), "route", None)
        if not isinstance(route, str) or not route:
            return
        # Under WSGI, request.META is the environ itself; under ASGI, request.scope
        # is the scope the middleware was given.
        request.META[ROUTE_KEY] = route
        asgi_scope = getattr(request, "scope", None)
        if isinstance(asgi_scope, MutableMapping):
            asgi_scope[ROUTE_KEY] = route
    except Exception as exc:  # noqa: BLE001 - ours: the response goes on
        _faults.report("middleware: could not read Django's route", exc)
