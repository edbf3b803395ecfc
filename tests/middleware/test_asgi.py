"""ASGIMiddleware on Starlette and FastAPI over a counted SQLite file: the header, the route,
N+1, streaming, exceptions, tasks, lifespan and websockets, faults and options."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import querymeter
from querymeter import dbapi, middleware
from querymeter.meter import Meter as MeterType
from querymeter.middleware import ASGIMiddleware

from ..servers import driver, postgres_dsn
from .conftest import FINGERPRINT, assert_timing_fits, run_queries, server_timing

starlette_applications = pytest.importorskip("starlette.applications")
starlette_responses = pytest.importorskip("starlette.responses")
starlette_routing = pytest.importorskip("starlette.routing")
starlette_testclient = pytest.importorskip("starlette.testclient")
httpx = pytest.importorskip("httpx")


class Views:
    """A Starlette application whose endpoints report what they did."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.raised: list[BaseException] = []
        self.produced: list[int] = []
        self.in_lifespan: list[querymeter.Scope | None] = []
        self.in_websocket: list[querymeter.Scope | None] = []
        self.barrier: asyncio.Barrier | None = None
        routing = starlette_routing
        self.app = starlette_applications.Starlette(
            routes=[
                routing.Route("/users/{user_id:int}", self.user),
                routing.Route("/stream", self.stream),
                routing.Route("/fail", self.fail),
                routing.WebSocketRoute("/socket", self.socket),
            ],
            lifespan=self.lifespan,
        )

    async def user(self, request: Any) -> Any:
        connection = sqlite3.connect(self.database)
        try:
            ran = run_queries(connection, int(request.query_params.get("n", "1")))
            if self.barrier is not None:
                await self.barrier.wait()  # every request is inside its scope now
                ran += run_queries(connection, request.path_params["user_id"])
            return starlette_responses.JSONResponse({"ran": ran})
        finally:
            connection.close()

    async def stream(self, request: Any) -> Any:
        connection = sqlite3.connect(self.database)

        async def chunks() -> AsyncIterator[str]:
            try:
                for chunk in range(3):
                    self.produced.append(chunk)
                    run_queries(connection, 1)
                    yield f"{chunk}\n"
            finally:
                connection.close()

        return starlette_responses.StreamingResponse(chunks(), media_type="text/plain")

    async def fail(self, request: Any) -> Any:
        connection = sqlite3.connect(self.database)
        try:
            run_queries(connection, 2)
        finally:
            connection.close()
        error = LookupError("the endpoint failed")
        self.raised.append(error)
        raise error

    async def socket(self, websocket: Any) -> None:
        self.in_websocket.append(querymeter.current_scope())
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    def lifespan(self, app: Any) -> Any:
        views = self

        class Lifespan:
            async def __aenter__(self) -> None:
                views.in_lifespan.append(querymeter.current_scope())

            async def __aexit__(self, *exc: object) -> None:
                views.in_lifespan.append(querymeter.current_scope())

        return Lifespan()


@pytest.fixture
def views(counting_meter: MeterType, database: Path) -> Views:
    return Views(database)


def http_scope(path: str) -> dict[str, Any]:
    """An ASGI HTTP scope for a GET of path, as a server makes it."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"test")],
        "server": ("test", 80),
        "client": ("test", 50000),
    }


async def get(app: Any, url: str) -> tuple[Any, int]:
    """GET url from the application in this task, through httpx; the response and the wall time."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        started = time.monotonic_ns()
        response = await client.get(url)
        return response, time.monotonic_ns() - started


def test_the_header_counts_the_queries_of_the_request(views: Views) -> None:
    """Server-Timing counts exactly the queries the endpoint ran, within the request's wall time."""
    with starlette_testclient.TestClient(ASGIMiddleware(views.app)) as client:
        for count in (0, 1, 7):
            started = time.monotonic_ns()
            response = client.get(f"/users/3?n={count}")
            wall_ns = time.monotonic_ns() - started
            assert response.status_code == 200
            assert response.json() == {"ran": count}
            assert_timing_fits(response.headers.get("server-timing"), count, wall_ns)


def test_the_scope_is_tagged_with_starlettes_route(
    views: Views, ended_scopes: list[querymeter.Scope]
) -> None:
    """The request's scope carries the method and the route's path format, and its queries."""
    asyncio.run(get(ASGIMiddleware(views.app), "/users/3?n=4"))
    (request,) = ended_scopes
    assert dict(request.tags) == {"method": "GET", "route": "/users/{user_id}"}
    assert request.queries == 4


def test_a_path_no_route_matches_is_tagged_with_the_path(
    views: Views, ended_scopes: list[querymeter.Scope]
) -> None:
    """Without a route, the scope's route tag is the request's path."""
    response, _ = asyncio.run(get(ASGIMiddleware(views.app), "/nowhere"))
    assert response.status_code == 404
    assert server_timing(response.headers.get("server-timing"))[1] == 0
    assert dict(ended_scopes[0].tags) == {"method": "GET", "route": "/nowhere"}


def test_the_n_plus_one_pattern_is_logged(views: Views, caplog: pytest.LogCaptureFixture) -> None:
    """Ten runs of a statement with n_plus_one=5 log a warning naming route, statement, count."""
    app = ASGIMiddleware(views.app, warn_n_plus_one=True, n_plus_one=5)
    with caplog.at_level(logging.WARNING, logger="querymeter.middleware"):
        asyncio.run(get(app, "/users/3?n=10"))
    (record,) = [r for r in caplog.records if r.name == "querymeter.middleware"]
    message = record.getMessage()
    assert "GET /users/{user_id}" in message
    assert FINGERPRINT in message
    assert "10 runs" in message


def test_no_warning_at_or_under_the_threshold_nor_unless_asked(
    views: Views, caplog: pytest.LogCaptureFixture
) -> None:
    """Five runs with n_plus_one=5 log nothing; neither do ten without warn_n_plus_one."""
    with caplog.at_level(logging.DEBUG, logger="querymeter.middleware"):
        asyncio.run(get(ASGIMiddleware(views.app, warn_n_plus_one=True), "/users/3?n=5"))
        asyncio.run(get(ASGIMiddleware(views.app), "/users/3?n=10"))
    assert [r for r in caplog.records if r.name == "querymeter.middleware"] == []


def test_a_streamed_body_is_passed_on_message_by_message(
    views: Views, ended_scopes: list[querymeter.Scope]
) -> None:
    """Each body message reaches the server before the next chunk is produced; its queries count
    after the header."""
    messages: list[tuple[dict[str, Any], list[int]]] = []

    async def receive() -> dict[str, Any]:
        if not messages:
            return {"type": "http.request", "body": b"", "more_body": False}
        await asyncio.Event().wait()  # no disconnect: the stream ends by itself
        raise AssertionError("unreachable")

    async def send(message: dict[str, Any]) -> None:
        messages.append((dict(message), list(views.produced)))

    asyncio.run(ASGIMiddleware(views.app)(http_scope("/stream"), receive, send))
    start, *body = messages
    headers = dict(start[0]["headers"])
    assert server_timing(headers[b"server-timing"].decode())[1] == 0
    chunks = [(message["body"], produced) for message, produced in body if message["body"]]
    assert chunks == [(b"0\n", [0]), (b"1\n", [0, 1]), (b"2\n", [0, 1, 2])]
    (request,) = ended_scopes
    assert request.queries == 3


def test_an_endpoints_exception_passes_through_and_the_scope_closes(
    views: Views, ended_scopes: list[querymeter.Scope]
) -> None:
    """The endpoint's own exception reaches the caller; the scope has ended, in this task too."""

    async def main() -> tuple[querymeter.Scope | None, BaseException]:
        with pytest.raises(LookupError) as caught:
            await get(ASGIMiddleware(views.app), "/fail")
        return querymeter.current_scope(), caught.value

    current, raised = asyncio.run(main())
    assert current is None
    assert raised is views.raised[0]
    (request,) = ended_scopes
    assert request.elapsed_ns is not None
    assert (request.queries, dict(request.tags)) == (2, {"method": "GET", "route": "/fail"})


def test_concurrent_requests_keep_their_own_counts(views: Views) -> None:
    """Requests served at once by asyncio tasks each count only their own queries."""

    async def main() -> list[tuple[int, int]]:
        views.barrier = asyncio.Barrier(4)
        app = ASGIMiddleware(views.app)
        responses = await asyncio.gather(
            *(get(app, f"/users/{user_id}?n=2") for user_id in (1, 3, 5, 8))
        )
        return [
            (response.json()["ran"], server_timing(response.headers["server-timing"])[1])
            for response, _ in responses
        ]

    assert asyncio.run(main()) == [(3, 3), (5, 5), (7, 7), (10, 10)]


def test_lifespan_and_websockets_pass_through_without_a_scope(
    views: Views, ended_scopes: list[querymeter.Scope]
) -> None:
    """Lifespan events and a websocket reach the application, with no scope open."""
    client = starlette_testclient.TestClient(ASGIMiddleware(views.app))
    with client, client.websocket_connect("/socket") as websocket:
        assert websocket.receive_text() == "hello"
    assert views.in_lifespan == [None, None]
    assert views.in_websocket == [None]
    assert ended_scopes == []


def test_server_timing_can_be_turned_off(views: Views) -> None:
    """server_timing=False adds no header."""
    response, _ = asyncio.run(get(ASGIMiddleware(views.app, server_timing=False), "/users/3"))
    assert response.status_code == 200
    assert "server-timing" not in response.headers


def test_a_fault_of_the_middleware_leaves_the_request_alone(
    views: Views, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault opening the scope or making the header is reported; the response is unchanged."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("broken on purpose")

    before = querymeter.faults()
    monkeypatch.setattr(middleware, "scope", broken)
    response, _ = asyncio.run(get(ASGIMiddleware(views.app), "/users/3?n=2"))
    assert (response.status_code, response.json()) == (200, {"ran": 2})
    assert "server-timing" not in response.headers
    monkeypatch.undo()

    monkeypatch.setattr(middleware._Request, "server_timing", broken)
    response, _ = asyncio.run(get(ASGIMiddleware(views.app), "/users/3?n=2"))
    assert (response.status_code, response.json()) == (200, {"ran": 2})
    assert "server-timing" not in response.headers

    after = querymeter.faults()
    for cause in (
        "middleware: could not open a request's scope",
        "middleware: could not add the Server-Timing header",
    ):
        assert after.get(cause, 0) == before.get(cause, 0) + 1


def test_fastapi_routes_are_named_and_counted(
    counting_meter: MeterType, database: Path, ended_scopes: list[querymeter.Scope]
) -> None:
    """Added with add_middleware under FastAPI, the route is the path operation's path and the
    header counts its queries."""
    fastapi = pytest.importorskip("fastapi")
    app = fastapi.FastAPI()

    def item(item_id: int, n: int = 1) -> dict[str, int]:
        connection = sqlite3.connect(database, check_same_thread=False)
        try:
            return {"ran": run_queries(connection, n)}
        finally:
            connection.close()

    app.add_api_route("/items/{item_id}", item)
    app.add_middleware(ASGIMiddleware)  # inside FastAPI's own error middleware
    with starlette_testclient.TestClient(app) as client:
        started = time.monotonic_ns()
        response = client.get("/items/4?n=6")
        wall_ns = time.monotonic_ns() - started
    assert response.json() == {"ran": 6}
    assert_timing_fits(response.headers.get("server-timing"), 6, wall_ns)
    (request,) = ended_scopes
    assert dict(request.tags) == {"method": "GET", "route": "/items/{item_id}"}


@pytest.mark.servers
def test_postgresql_requests_served_at_once_count_their_own_queries(
    counting_meter: MeterType, ended_scopes: list[querymeter.Scope]
) -> None:
    """Against PostgreSQL through psycopg's async driver, overlapping requests each count their
    own queries, in the header and in their scopes."""
    dsn = postgres_dsn()
    psycopg = driver("psycopg")

    async def endpoint(request: Any) -> Any:
        connection = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
        try:
            ran = 0
            for item in range(int(request.query_params["n"])):
                # A short sleep in the server: the other requests' queries run meanwhile.
                await (await connection.execute("SELECT pg_sleep(0.005), %s", (item,))).fetchall()
                ran += 1
            return starlette_responses.JSONResponse({"ran": ran})
        finally:
            await connection.close()

    app = ASGIMiddleware(
        starlette_applications.Starlette(routes=[starlette_routing.Route("/work", endpoint)])
    )

    async def main() -> list[tuple[Any, int]]:
        return await asyncio.gather(*(get(app, f"/work?n={n}") for n in (2, 5, 9)))

    dbapi.instrument(psycopg, meter=counting_meter)
    try:
        results = asyncio.run(main())
    finally:
        dbapi.uninstrument(psycopg)
    for (response, wall_ns), count in zip(results, (2, 5, 9), strict=True):
        assert response.json() == {"ran": count}
        assert_timing_fits(response.headers.get("server-timing"), count, wall_ns)
    assert sorted(s.queries for s in ended_scopes) == [2, 5, 9]


def test_bad_options_are_refused() -> None:
    """A non-callable application and a bad n_plus_one raise, naming the problem."""
    with pytest.raises(TypeError, match="app must be a callable"):
        ASGIMiddleware("app")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_plus_one must be at least 1"):
        ASGIMiddleware(starlette_applications.Starlette(), n_plus_one=-1)
