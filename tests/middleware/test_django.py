"""The middleware on Django (configured in this process, on a counted SQLite file): under WSGI
and ASGI, the route Django resolved, the header against Django's own count, N+1, streaming and
exceptions."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

import querymeter
from querymeter.meter import Meter as MeterType
from querymeter.middleware import (
    ROUTE_KEY,
    ASGIMiddleware,
    DjangoRouteMiddleware,
    WSGIMiddleware,
)

from .conftest import FINGERPRINT, assert_timing_fits, server_timing

django = pytest.importorskip("django")
httpx = pytest.importorskip("httpx")
werkzeug_test = pytest.importorskip("werkzeug.test")

from django import http, urls  # noqa: E402 - after the skip: Django may be missing
from django.conf import settings  # noqa: E402
from django.db import connection, connections  # noqa: E402

raised: list[BaseException] = []
produced: list[int] = []


def run_statements(count: int) -> int:
    """Run the statement count times through Django; how many Django says it ran."""
    executed: list[str] = []

    def record(execute: Callable[..., Any], sql: str, *args: Any) -> Any:
        executed.append(sql)
        return execute(sql, *args)

    with connection.execute_wrapper(record), connection.cursor() as cursor:
        for item in range(count):
            cursor.execute("SELECT owner FROM qm_mw_items WHERE id = %s", [item])
            cursor.fetchall()
    return len(executed)


def user(request: Any, user_id: int) -> Any:
    return http.JsonResponse({"ran": run_statements(int(request.GET.get("n", "1")))})


def stream(request: Any) -> Any:
    def chunks() -> Iterator[bytes]:
        for chunk in range(3):
            produced.append(chunk)
            run_statements(1)
            yield f"{chunk}\n".encode()

    return http.StreamingHttpResponse(chunks(), content_type="text/plain")


def fail(request: Any) -> Any:
    run_statements(2)
    error = LookupError("the view failed")
    raised.append(error)
    raise error


async def in_loop(request: Any, name: str) -> Any:
    return http.JsonResponse({"main_thread": threading.current_thread() is threading.main_thread()})


urlpatterns = [
    urls.path("users/<int:user_id>", user),
    urls.path("async/<slug:name>", in_loop),
    urls.path("stream", stream),
    urls.path("fail", fail),
]


@pytest.fixture(scope="module")
def django_ready(counting_meter: MeterType, database: Path) -> Iterator[None]:
    """Django configured on the SQLite file, its connection of this thread open (and counted)."""
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            DEBUG_PROPAGATE_EXCEPTIONS=True,  # the view's exceptions reach the caller
            ALLOWED_HOSTS=["*"],
            SECRET_KEY="querymeter tests",
            ROOT_URLCONF=__name__,
            INSTALLED_APPS=[],
            MIDDLEWARE=["querymeter.middleware.DjangoRouteMiddleware"],
            DATABASES={
                "default": {
                    "ENGINE": "django.db.backends.sqlite3",
                    "NAME": str(database),
                    "CONN_MAX_AGE": None,  # kept: its opening statements are no request's
                }
            },
        )
        django.setup()
    connection.ensure_connection()
    try:
        yield
    finally:
        # Opened with this meter's driver hook: the next meter opens its own.
        connections.close_all()


@pytest.fixture
def wsgi(django_ready: None) -> Callable[..., Any]:
    from django.core.wsgi import get_wsgi_application

    def client(**options: Any) -> Any:
        return werkzeug_test.Client(WSGIMiddleware(get_wsgi_application(), **options))

    return client


def asgi_get(app: Any, *urls_to_get: str) -> list[Any]:
    """GET each url in turn from the ASGI application in one event loop; the responses."""

    async def main() -> list[Any]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.get(url) for url in urls_to_get]

    return asyncio.run(main())


def test_wsgi_the_header_counts_the_queries_django_ran(
    wsgi: Callable[..., Any], ended_scopes: list[querymeter.Scope]
) -> None:
    """Under WSGI, Server-Timing counts what Django executed; the scope has Django's route."""
    client = wsgi()
    for count in (0, 1, 6):
        started = time.monotonic_ns()
        response = client.get(f"/users/4?n={count}", buffered=True)
        wall_ns = time.monotonic_ns() - started
        assert response.status_code == 200
        assert response.json == {"ran": count}
        assert_timing_fits(response.headers.get("Server-Timing"), count, wall_ns)
    assert [dict(s.tags) for s in ended_scopes] == [
        {"method": "GET", "route": "users/<int:user_id>"}
    ] * 3
    assert [s.queries for s in ended_scopes] == [0, 1, 6]


def test_asgi_the_header_counts_the_queries_sqlite_ran(
    django_ready: None, ended_scopes: list[querymeter.Scope], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ASGI, Server-Timing counts every statement SQLite traced in the request (the opening
    of Django's connection for the request's thread included); the scope has Django's route."""
    from django.core.asgi import get_asgi_application

    traced: list[str] = []
    counted_connect = sqlite3.dbapi2.connect

    def traced_connect(*args: Any, **kwargs: Any) -> Any:
        opened = counted_connect(*args, **kwargs)
        opened.set_trace_callback(traced.append)  # before Django's own opening statements
        return opened

    monkeypatch.setattr(sqlite3.dbapi2, "connect", traced_connect)
    app = ASGIMiddleware(get_asgi_application())
    for count in (0, 6):
        before = len(traced)
        (response,) = asgi_get(app, f"/users/4?n={count}")
        assert response.json() == {"ran": count}
        statements = len(traced) - before
        # Django runs each ASGI request's sync views in a thread of its own, which opens a
        # connection: its opening statements are the request's too.
        assert statements >= count
        assert server_timing(response.headers.get("server-timing"))[1] == statements
        assert ended_scopes[-1].queries == statements
        assert dict(ended_scopes[-1].tags) == {"method": "GET", "route": "users/<int:user_id>"}


def test_an_async_view_is_served_and_its_route_named(
    django_ready: None, ended_scopes: list[querymeter.Scope]
) -> None:
    """Under ASGI, an async view runs on the event loop's thread and its route is named."""
    from django.core.asgi import get_asgi_application

    (response,) = asgi_get(ASGIMiddleware(get_asgi_application()), "/async/ann")
    assert response.json() == {"main_thread": True}
    assert dict(ended_scopes[0].tags) == {"method": "GET", "route": "async/<slug:name>"}


def test_the_route_middleware_takes_the_mode_of_its_stack() -> None:
    """Given an async get_response, DjangoRouteMiddleware is a coroutine function to Django (no
    thread hop); given a sync one, a plain callable; both name the route of the request."""
    from asgiref.sync import iscoroutinefunction

    def request() -> Any:
        match = SimpleNamespace(route="orders/<int:order_id>")
        return SimpleNamespace(resolver_match=match, META={}, scope={})

    async def async_response(request: Any) -> str:
        return "async response"

    async_middleware = DjangoRouteMiddleware(async_response)
    assert iscoroutinefunction(async_middleware)
    served = request()
    assert asyncio.run(async_middleware(served)) == "async response"
    assert served.META[ROUTE_KEY] == served.scope[ROUTE_KEY] == "orders/<int:order_id>"

    sync_middleware = DjangoRouteMiddleware(lambda request: "sync response")
    assert not iscoroutinefunction(sync_middleware)
    served = request()
    assert sync_middleware(served) == "sync response"
    assert served.META[ROUTE_KEY] == "orders/<int:order_id>"


def test_the_n_plus_one_pattern_is_logged_with_djangos_route(
    wsgi: Callable[..., Any], caplog: pytest.LogCaptureFixture
) -> None:
    """Ten runs with n_plus_one=5 log one warning naming the route, the statement and the count;
    five log none."""
    client = wsgi(warn_n_plus_one=True, n_plus_one=5)
    with caplog.at_level(logging.WARNING, logger="querymeter.middleware"):
        client.get("/users/4?n=5", buffered=True)
        assert [r for r in caplog.records if r.name == "querymeter.middleware"] == []
        client.get("/users/4?n=10", buffered=True)
    (record,) = [r for r in caplog.records if r.name == "querymeter.middleware"]
    message = record.getMessage()
    assert "GET users/<int:user_id>" in message
    assert FINGERPRINT in message
    assert "10 runs" in message


def test_a_streamed_body_is_passed_on_chunk_by_chunk(
    django_ready: None, ended_scopes: list[querymeter.Scope]
) -> None:
    """Django's streamed chunks reach the server one by one; their queries come after the header."""
    from django.core.wsgi import get_wsgi_application

    started: list[list[tuple[str, str]]] = []
    environ = werkzeug_test.EnvironBuilder(path="/stream").get_environ()
    body = WSGIMiddleware(get_wsgi_application())(
        environ, lambda status, headers, *exc: started.append(headers)
    )
    produced.clear()
    seen = []
    try:
        for chunk in body:
            seen.append((chunk, list(produced)))
    finally:
        body.close()  # type: ignore[attr-defined]
    assert seen == [(b"0\n", [0]), (b"1\n", [0, 1]), (b"2\n", [0, 1, 2])]
    assert server_timing(dict(started[0])["Server-Timing"])[1] == 0
    (request,) = ended_scopes
    assert request.queries == 3


def test_a_views_exception_passes_through_and_the_scope_closes(
    wsgi: Callable[..., Any], ended_scopes: list[querymeter.Scope]
) -> None:
    """The view's own exception reaches the caller; the scope has ended with the view's queries."""
    raised.clear()
    with pytest.raises(LookupError) as caught:
        wsgi().get("/fail")
    assert caught.value is raised[0]
    assert querymeter.current_scope() is None
    (request,) = ended_scopes
    assert request.elapsed_ns is not None
    assert (request.queries, dict(request.tags)) == (2, {"method": "GET", "route": "fail"})


def test_a_session_focused_on_a_django_route_sees_the_views_queries(
    wsgi: Callable[..., Any], counting_meter: MeterType
) -> None:
    """DjangoRouteMiddleware names the route before the view runs (process_view): a
    profiling session focused on the route captures the view's queries."""
    client = wsgi()
    with querymeter.profile(
        10, sample=1.0, focus={"route": "users/<int:user_id>"}, meter=counting_meter
    ) as session:
        client.get("/users/4?n=3", buffered=True)
    report = session.report()
    assert sum(s["calls"] for s in report.statements) == 3
    assert {dict(s.tags)["route"] for s in report.samples} == {"users/<int:user_id>"}
