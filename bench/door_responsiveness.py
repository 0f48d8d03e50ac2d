"""Does one admin's huge GraphQL request hold up another person's sign-in page?

The door reads every GraphQL request (parsing its document) before it passes anything
on. Reading is pure Python work; done on the admin API's event loop, a large document
would stall every other request to the door while it is read. This bench serves the
door's routes as the admin API does (uvicorn, one process, the embedded PostgreSQL for
its sessions) and times `GET /door/sign-in`, first idle, then while four clients keep
posting the largest documents the door takes (just under its token limit). The ratio of
the two is the figure: a few, not hundreds. The webserver behind the door is a closed
port, so what is timed is the door's own work.

    .venv/bin/python -m bench.door_responsiveness [--samples 60] [--heavy-clients 4]
"""

import argparse
import contextlib
import http.client
import json
import statistics
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import uvicorn
from fastapi import FastAPI
from sqlalchemy import Engine, insert

from jobs_pipeline.interfaces.door.graphql_passage import GRAPHQL_BODY_LIMIT
from jobs_pipeline.interfaces.door.graphql_reading import MAX_TOKENS
from jobs_pipeline.interfaces.door.routes import router
from jobs_pipeline.interfaces.door.session import COOKIE, DoorSettings, session_cookie
from jobs_pipeline.interfaces.door.state import opened_door
from jobs_pipeline.storage.api_tokens import issue_token
from jobs_pipeline.storage.app_database_setup import create_app_schema
from jobs_pipeline.storage.app_tables import users
from jobs_pipeline.storage.embedded import start_embedded_postgres
from jobs_pipeline.storage.engine import create_app_engine
from jobs_pipeline.storage.schema_migrations import upgrade
from jobs_pipeline.storage.ui_sessions import start_session

HOST = "127.0.0.1"
ADMIN = "bench-admin@example.com"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=60)
    parser.add_argument("--heavy-clients", type=int, default=4)
    options = parser.parse_args()
    if options.samples < 2 or options.heavy_clients < 1:
        parser.error("--samples takes 2 or more and --heavy-clients a positive number")
    with tempfile.TemporaryDirectory(prefix="jp-door-bench-") as folder:
        postgres = start_embedded_postgres(Path(folder) / "pg", cleanup_mode="delete")
        postgres.ensure_database("door")
        engine = create_app_engine(postgres.url("door"))
        try:
            results = measure(engine, postgres.url("door"), options.samples, options.heavy_clients)
        finally:
            engine.dispose()
            postgres.server.cleanup()
    table = pd.DataFrame(results["rows"]).set_index("phase")
    print(table.to_string(float_format=lambda value: f"{value:.1f}"))
    print(json.dumps(results["summary"]))


def measure(engine: Engine, url: str, samples: int, heavy_clients: int) -> dict[str, Any]:
    create_app_schema(engine)
    upgrade(url)
    settings = DoorSettings(
        secret="b" * 48,
        viewers=frozenset(),
        webserver_url=f"http://{HOST}:9",  # nothing listens: the door's work alone is timed
        read_only_webserver_url=f"http://{HOST}:9",
    )
    with engine.begin() as connection:
        connection.execute(insert(users).values(email=ADMIN, role="admin"))
        token_id, _ = issue_token(connection, ADMIN)
        cookie = session_cookie(settings, start_session(connection, token_id))
    with serving(door_app(settings, engine)) as port:
        idle = latencies(port, samples)
        heavy = heavy_document()
        one_read = timed_post(port, cookie, heavy)
        with posting(port, cookie, heavy, heavy_clients) as posted:
            loaded = latencies(port, samples)
        rows = [summary_row("idle", idle), summary_row(f"{heavy_clients} heavy posters", loaded)]
    ratio = statistics.median(loaded) / statistics.median(idle)
    return {
        "rows": rows,
        "summary": {
            "idle_p50_ms": round(statistics.median(idle), 1),
            "loaded_p50_ms": round(statistics.median(loaded), 1),
            "loaded_max_ms": round(max(loaded), 1),
            "p50_ratio": round(ratio, 2),
            "heavy_document_bytes": len(heavy),
            "heavy_document_read_ms": round(one_read, 1),
            "heavy_posts_during_measure": posted[0],
        },
    }


def door_app(settings: DoorSettings, engine: Engine) -> FastAPI:
    """The door's routes as the admin API serves them, without the rest of the API."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with opened_door(app, settings, engine, dg.DagsterInstance.ephemeral()):
            yield

    app = FastAPI(lifespan=lifespan)
    app.include_router(router)
    return app


@contextlib.contextmanager
def serving(app: FastAPI) -> Iterator[int]:
    config = uvicorn.Config(app, host=HOST, port=0, log_level="warning", proxy_headers=False)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not (server.started and server.servers):
        if time.monotonic() > deadline or not thread.is_alive():
            raise SystemExit("the door's server did not start")
        time.sleep(0.05)
    port = int(server.servers[0].sockets[0].getsockname()[1])
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def heavy_document() -> bytes:
    """The largest the door reads: a query just under its token limit and body cap."""
    aliases = (MAX_TOKENS - 10) // 3  # `aN: version` is three tokens
    query = "{ " + " ".join(f"a{n}: version" for n in range(aliases)) + " }"
    body = json.dumps({"query": query}).encode()
    if len(body) >= GRAPHQL_BODY_LIMIT:
        raise SystemExit(f"the largest document ({len(body)} bytes) is over the door's cap")
    return body


def latencies(port: int, samples: int) -> list[float]:
    """Milliseconds for the sign-in page, one request at a time."""
    times = []
    for _ in range(samples):
        started = time.perf_counter()
        status = request(port, "GET", "/door/sign-in")
        times.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise SystemExit(f"the sign-in page answered {status}")
    return times


def timed_post(port: int, cookie: str, body: bytes) -> float:
    started = time.perf_counter()
    request(port, "POST", "/door/graphql", body, cookie)
    return (time.perf_counter() - started) * 1000


@contextlib.contextmanager
def posting(port: int, cookie: str, body: bytes, clients: int) -> Iterator[list[int]]:
    """`clients` threads posting `body` without pause; the count of posts answered."""
    stop = threading.Event()
    posted = [0]

    def keep_posting() -> None:
        while not stop.is_set():
            request(port, "POST", "/door/graphql", body, cookie)
            posted[0] += 1

    threads = [threading.Thread(target=keep_posting, daemon=True) for _ in range(clients)]
    for thread in threads:
        thread.start()
    while posted[0] < clients:  # every poster has had one answered: the door is busy
        time.sleep(0.01)
    try:
        yield posted
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)


def request(
    port: int, method: str, path: str, body: bytes | None = None, cookie: str | None = None
) -> int:
    connection = http.client.HTTPConnection(HOST, port, timeout=120)
    headers = {"Content-Type": "application/json"}
    if cookie:
        headers["Cookie"] = f"{COOKIE}={cookie}"
    try:
        connection.request(method, path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return response.status
    finally:
        connection.close()


def summary_row(phase: str, times: list[float]) -> dict[str, Any]:
    ordered = sorted(times)
    return {
        "phase": phase,
        "p50 ms": statistics.median(ordered),
        "p95 ms": ordered[int(len(ordered) * 0.95) - 1],
        "max ms": ordered[-1],
    }


if __name__ == "__main__":
    main()
