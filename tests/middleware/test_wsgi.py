"""WSGIMiddleware on Flask over a counted SQLite file: the header, the route, N+1, streaming,
exceptions, threads, faults and options."""

from __future__ import annotations

import http.client
import io
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.util import FileWrapper
from wsgiref.validate import validator

import pytest

import querymeter
from querymeter import middleware
from querymeter.meter import Meter as MeterType
from querymeter.middleware import WSGIMiddleware

from .conftest import FINGERPRINT, QUERY, assert_timing_fits, run_queries, server_timing

flask = pytest.importorskip("flask")
werkzeug_test = pytest.importorskip("werkzeug.test")


class Views:
    """A Flask application whose views report what they did."""

    def __init__(self, database: Path) -> None:
        self.database = database
        self.raised: list[BaseException] = []
        self.produced: list[int] = []
        self.barrier: threading.Barrier | None = None
        app = flask.Flask(__name__)
        app.testing = True  # the view's exceptions propagate to the caller
        app.add_url_rule("/users/<int:user_id>", view_func=self.user)
        app.add_url_rule("/stream", view_func=self.stream)
        app.add_url_rule("/fail", view_func=self.fail)
        self.app = app

    def user(self, user_id: int) -> dict[str, int]:
        connection = sqlite3.connect(self.database)
        try:
            ran = run_queries(connection, int(flask.request.args.get("n", "1")))
            if self.barrier is not None:
                self.barrier.wait(timeout=10)  # every request is inside its scope now
                ran += run_queries(connection, user_id)
            return {"ran": ran}
        finally:
            connection.close()

    def stream(self) -> Any:
        connection = sqlite3.connect(self.database, check_same_thread=False)

        def chunks() -> Iterator[str]:
            try:
                for chunk in range(3):
                    self.produced.append(chunk)
                    run_queries(connection, 1)
                    yield f"{chunk}\n"
            finally:
                connection.close()

        return flask.Response(chunks(), mimetype="text/plain")

    def fail(self) -> str:
        connection = sqlite3.connect(self.database)
        try:
            run_queries(connection, 2)
        finally:
            connection.close()
        error = LookupError("the view failed")
        self.raised.append(error)
        raise error


@pytest.fixture
def views(counting_meter: MeterType, database: Path) -> Views:
    return Views(database)


class BufferedClient:
    """Werkzeug's test client over the middleware, reading each body whole and closing it,
    as a server does."""

    def __init__(self, app: Any, **options: Any) -> None:
        self.client = werkzeug_test.Client(WSGIMiddleware(app, **options))

    def get(self, url: str) -> Any:
        return self.client.get(url, buffered=True)


def client(app: Any, **options: Any) -> BufferedClient:
    return BufferedClient(app, **options)


def timed_get(test_client: BufferedClient, url: str) -> tuple[Any, int]:
    started = time.monotonic_ns()
    response = test_client.get(url)
    return response, time.monotonic_ns() - started


def test_the_header_counts_the_queries_of_the_request(views: Views) -> None:
    """Server-Timing counts exactly the queries the view ran, within the request's wall time."""
    test_client = client(views.app.wsgi_app)
    for count in (0, 1, 7):
        response, wall_ns = timed_get(test_client, f"/users/3?n={count}")
        assert response.status_code == 200
        assert response.json == {"ran": count}
        assert_timing_fits(response.headers.get("Server-Timing"), count, wall_ns)


def test_the_scope_is_tagged_with_flasks_route(
    views: Views, ended_scopes: list[querymeter.Scope]
) -> None:
    """The request's scope carries the method and Flask's URL rule, and the view's queries."""
    client(views.app.wsgi_app).get("/users/3?n=4")
    (request,) = ended_scopes
    assert dict(request.tags) == {"method": "GET", "route": "/users/<int:user_id>"}
    assert request.queries == 4
    assert request.elapsed_ns is not None


def test_a_path_no_rule_matches_is_tagged_with_the_path(
    views: Views, ended_scopes: list[querymeter.Scope]
) -> None:
    """Without a route, the scope's route tag is the request's path."""
    response = client(views.app.wsgi_app).get("/nowhere")
    assert response.status_code == 404
    assert server_timing(response.headers.get("Server-Timing"))[1] == 0
    assert dict(ended_scopes[0].tags) == {"method": "GET", "route": "/nowhere"}


def test_the_n_plus_one_pattern_is_logged(views: Views, caplog: pytest.LogCaptureFixture) -> None:
    """Ten runs of a statement with n_plus_one=5 log a warning naming route, statement, count."""
    test_client = client(views.app.wsgi_app, warn_n_plus_one=True, n_plus_one=5)
    with caplog.at_level(logging.WARNING, logger="querymeter.middleware"):
        test_client.get("/users/3?n=10")
    (record,) = [r for r in caplog.records if r.name == "querymeter.middleware"]
    assert record.levelno == logging.WARNING
    message = record.getMessage()
    assert "GET /users/<int:user_id>" in message
    assert FINGERPRINT in message
    assert "10 runs" in message


def test_no_warning_at_or_under_the_threshold_nor_unless_asked(
    views: Views, caplog: pytest.LogCaptureFixture
) -> None:
    """Five runs with n_plus_one=5 log nothing; neither do ten without warn_n_plus_one."""
    with caplog.at_level(logging.DEBUG, logger="querymeter.middleware"):
        client(views.app.wsgi_app, warn_n_plus_one=True, n_plus_one=5).get("/users/3?n=5")
        client(views.app.wsgi_app).get("/users/3?n=10")
    assert [r for r in caplog.records if r.name == "querymeter.middleware"] == []


def test_a_streamed_body_is_passed_on_chunk_by_chunk(
    views: Views, ended_scopes: list[querymeter.Scope]
) -> None:
    """Each chunk reaches the server before the next is made; its queries count after the header."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
        started.append((status, headers))
        return lambda data: None

    environ = werkzeug_test.EnvironBuilder(path="/stream").get_environ()
    body = WSGIMiddleware(views.app.wsgi_app)(environ, start_response)
    seen = []
    try:
        for chunk in body:
            seen.append((chunk, list(views.produced)))
    finally:
        body.close()  # type: ignore[attr-defined]
    assert seen == [(b"0\n", [0]), (b"1\n", [0, 1]), (b"2\n", [0, 1, 2])]
    (status, headers) = started[0]
    assert status.startswith("200")
    assert server_timing(dict(headers)["Server-Timing"])[1] == 0  # the body's queries came after
    (request,) = ended_scopes
    assert request.queries == 3


def test_the_body_is_not_consumed_before_the_server_asks(views: Views) -> None:
    """Calling the application produces no chunk: the server drives the body."""
    environ = werkzeug_test.EnvironBuilder(path="/stream").get_environ()
    body = WSGIMiddleware(views.app.wsgi_app)(environ, lambda status, headers, *exc: None)
    assert views.produced == []
    body.close()  # type: ignore[attr-defined]


def test_a_views_exception_passes_through_and_the_scope_closes(
    views: Views, ended_scopes: list[querymeter.Scope]
) -> None:
    """The view's exception reaches the caller; the scope ended, its queries also the outer's."""
    with querymeter.scope(test="outer") as outer:
        with pytest.raises(LookupError) as caught:
            client(views.app.wsgi_app).get("/fail")
        assert querymeter.current_scope() is outer
    assert querymeter.current_scope() is None
    assert caught.value is views.raised[0]
    request = ended_scopes[0]
    assert request.elapsed_ns is not None
    assert (request.queries, dict(request.tags)) == (
        2,
        {"test": "outer", "method": "GET", "route": "/fail"},
    )
    assert outer.queries == 2


def test_concurrent_requests_keep_their_own_counts(views: Views) -> None:
    """Requests served at once by threads each count only their own queries."""
    views.barrier = threading.Barrier(4)
    results: dict[int, tuple[int, int]] = {}

    def request(user_id: int) -> None:
        response = client(views.app.wsgi_app).get(f"/users/{user_id}?n=2")
        results[user_id] = (
            response.json["ran"],
            server_timing(response.headers["Server-Timing"])[1],
        )

    threads = [threading.Thread(target=request, args=(user_id,)) for user_id in (1, 3, 5, 8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == {1: (3, 3), 3: (5, 5), 5: (7, 7), 8: (10, 10)}


def test_server_timing_can_be_turned_off(views: Views) -> None:
    """server_timing=False adds no header."""
    response = client(views.app.wsgi_app, server_timing=False).get("/users/3?n=2")
    assert response.status_code == 200
    assert "Server-Timing" not in response.headers


def test_a_fault_of_the_middleware_leaves_the_request_alone(
    views: Views, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fault opening the scope or making the header is reported; the response is unchanged."""

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("broken on purpose")

    before = querymeter.faults()
    monkeypatch.setattr(middleware, "scope", broken)
    response = client(views.app.wsgi_app).get("/users/3?n=2")
    assert (response.status_code, response.json) == (200, {"ran": 2})
    assert "Server-Timing" not in response.headers
    monkeypatch.undo()

    monkeypatch.setattr(middleware._Request, "server_timing", broken)
    response = client(views.app.wsgi_app).get("/users/3?n=2")
    assert (response.status_code, response.json) == (200, {"ran": 2})
    assert "Server-Timing" not in response.headers
    assert querymeter.current_scope() is None

    after = querymeter.faults()
    for cause in (
        "middleware: could not open a request's scope",
        "middleware: could not add the Server-Timing header",
    ):
        assert after.get(cause, 0) == before.get(cause, 0) + 1


def test_a_single_chunk_body_keeps_its_length() -> None:
    """A body of a known length still tells the server its length (for Content-Length)."""

    def one_chunk(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b"x"]

    app = WSGIMiddleware(one_chunk)
    body = app({"REQUEST_METHOD": "GET", "PATH_INFO": "/"}, lambda status, headers, *exc: None)
    assert len(body) == 1  # type: ignore[arg-type]
    assert list(body) == [b"x"]


def test_a_body_without_a_length_shows_none() -> None:
    """A generator body stays without len(), for servers that call it wherever it exists."""

    def generated(environ: dict[str, Any], start_response: Any) -> Iterator[bytes]:
        start_response("200 OK", [])
        yield b"x"

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    body = WSGIMiddleware(generated)(environ, lambda status, headers, *exc: None)
    assert not hasattr(body, "__len__")
    assert list(body) == [b"x"]


def test_a_file_wrapper_reaches_the_server_as_it_is(ended_scopes: list[querymeter.Scope]) -> None:
    """The server's own file wrapper is returned unwrapped (for sendfile), its scope ended."""

    def download(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](io.BytesIO(b"file contents"))

    environ = {"REQUEST_METHOD": "GET", "PATH_INFO": "/file", "wsgi.file_wrapper": FileWrapper}
    body = WSGIMiddleware(download)(environ, lambda status, headers, *exc: None)
    assert type(body) is FileWrapper
    assert b"".join(body) == b"file contents"
    assert [dict(s.tags) for s in ended_scopes] == [{"method": "GET", "route": "/file"}]


def test_the_applications_own_server_timing_is_kept() -> None:
    """An application's Server-Timing header stays, and ours is one more."""

    def timed(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [("Server-Timing", "app;dur=1.5")])
        return [b"x"]

    response = client(timed).get("/")
    (app_entry, db_entry) = response.headers.getlist("Server-Timing")
    assert app_entry == "app;dur=1.5"
    assert server_timing(db_entry)[1] == 0


def test_one_request_logs_at_most_ten_statements_then_a_count(
    counting_meter: MeterType, database: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Twelve repeated statements log the ten worst by name, the two others as a count."""
    aliases = "abcdefghijkl"

    def repeating(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        connection = sqlite3.connect(database)
        try:
            for rank, alias in enumerate(aliases):
                for item in range(6 + rank):  # the later, the worse
                    connection.execute(
                        f"SELECT owner AS {alias} FROM qm_mw_items WHERE id = ?", (item,)
                    )
        finally:
            connection.close()
        start_response("200 OK", [])
        return [b"done"]

    with caplog.at_level(logging.WARNING, logger="querymeter.middleware"):
        client(repeating, warn_n_plus_one=True, n_plus_one=5).get("/repeat")
    messages = [r.getMessage() for r in caplog.records if r.name == "querymeter.middleware"]
    assert len(messages) == 11
    named = [f"{6 + rank} runs of select owner as {alias}" for rank, alias in enumerate(aliases)]
    for message, expected in zip(messages[:10], named[::-1][:10], strict=True):
        assert expected in message
    assert "2 more statements ran more than n_plus_one=5 times" in messages[-1]


def test_a_real_server_serves_through_the_middleware(
    views: Views, ended_scopes: list[querymeter.Scope]
) -> None:
    """Under wsgiref's server, checked by its PEP 3333 validator, a request over HTTP gets the
    header and a length, and the server's close() ends the request's scope."""

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    app = validator(WSGIMiddleware(views.app.wsgi_app))
    with make_server("127.0.0.1", 0, app, handler_class=QuietHandler) as server:
        serving = threading.Thread(target=server.handle_request)
        serving.start()
        connection = http.client.HTTPConnection("127.0.0.1", server.server_port, timeout=10)
        try:
            started = time.monotonic_ns()
            connection.request("GET", "/users/2?n=3")
            response = connection.getresponse()
            body = response.read()
            wall_ns = time.monotonic_ns() - started
        finally:
            connection.close()
        serving.join(timeout=10)
    assert (response.status, json.loads(body)) == (200, {"ran": 3})
    assert response.getheader("Content-Length") == str(len(body))
    assert_timing_fits(response.getheader("Server-Timing"), 3, wall_ns)
    (request,) = ended_scopes
    assert (request.queries, request.tags["route"]) == (3, "/users/<int:user_id>")


def test_bad_options_are_refused() -> None:
    """A non-callable application and a bad n_plus_one raise, naming the problem."""
    app = flask.Flask(__name__)
    with pytest.raises(TypeError, match="app must be a callable"):
        WSGIMiddleware(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_plus_one must be at least 1"):
        WSGIMiddleware(app, n_plus_one=0)
    with pytest.raises(TypeError, match="n_plus_one must be an int"):
        WSGIMiddleware(app, n_plus_one=True)
    with pytest.raises(TypeError, match="n_plus_one must be an int"):
        WSGIMiddleware(app, n_plus_one="5")  # type: ignore[arg-type]
    assert QUERY  # the statement of the views, used above
