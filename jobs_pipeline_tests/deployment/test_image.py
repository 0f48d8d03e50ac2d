"""The project's Dockerfile, built and run for real: one image for every process.

`make test-containers` prepares what these tests need and runs them: a Docker daemon and
a locally made base image (`jobs_pipeline_tests.support.docker_host`: nothing can be
pulled here). The image is built from the repository's own Dockerfile with that base as
`BASE_IMAGE`; then `setup`, the code server, the webserver and the daemon each run in a
container of that image, on the host's network, against the session's PostgreSQL, and a
run goes through the queue to SUCCESS. Then, with `setup --runs-in containers`, each run
executes in a container of its own from the image: one killed after its first batch fails,
is alerted once and frees its slot, and the next run's container does the rest.
"""

import asyncio
import os
import subprocess
import threading
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest
from dagster_graphql import DagsterGraphQLClient
from sqlalchemy import make_url

from jobs_pipeline.jobs.tier_expiration import JOB_NAME as EXPIRATION_JOB
from jobs_pipeline.storage.embedded import EmbeddedPostgres
from jobs_pipeline.tags import CONTAINER_TAG
from jobs_pipeline_tests.support.deadlines import deadline, wait_until
from jobs_pipeline_tests.support.deployed_runs import (
    open_gate,
    run_record,
    wait_for,
)
from jobs_pipeline_tests.support.deployment import REPOSITORY, running_deployment
from jobs_pipeline_tests.support.docker_host import BASE_IMAGE, DOCKER_HOST
from jobs_pipeline_tests.support.held_runs import (
    ALL_OF_THEM,
    MANY_BATCH,
    MANY_USERS,
    START_DEADLINE_S,
    add_expired_users,
    gate_after_first_batch,
    launch,
    ledger_rows,
    the_next_run_did_the_rest,
)
from jobs_pipeline_tests.support.processes import free_port

pytestmark = [pytest.mark.container, pytest.mark.slow]

IMAGE = "jobs-pipeline:test"
BUILD_DEADLINE_S = 900
RUN_DEADLINE_S = 180
HOME_IN_IMAGE = "/var/lib/jobs-pipeline/dagster_home"


def docker(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["docker", *args],
        env={**os.environ, "DOCKER_HOST": os.environ.get("DOCKER_HOST", DOCKER_HOST)},
        capture_output=True,
        text=True,
        timeout=deadline(timeout),
        check=False,
    )
    return done


@pytest.fixture(scope="module")
def image() -> str:
    """The repository's Dockerfile built on the locally made base."""
    base = os.environ.get("JOBS_PIPELINE_TEST_BASE_IMAGE", BASE_IMAGE)
    if docker("image", "inspect", base).returncode != 0:
        pytest.fail(
            f"no Docker daemon with the base image {base}: `make test-containers` makes both"
        )
    built = docker(
        "build",
        "--network",
        "host",
        "--build-arg",
        f"BASE_IMAGE={base}",
        "--tag",
        IMAGE,
        str(REPOSITORY),
        timeout=BUILD_DEADLINE_S,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    return IMAGE


# -- the session's PostgreSQL over TCP, as a container reaches a database server ----------------


async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    finally:
        writer.close()


@contextmanager
def tcp_to(postgres: EmbeddedPostgres) -> Iterator[int]:
    """A port on 127.0.0.1 passing each connection on to the server's unix socket."""
    port = free_port()
    socket_path = str(postgres.socket_dir / ".s.PGSQL.5432")
    loop = asyncio.new_event_loop()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_unix_connection(socket_path)
        await asyncio.gather(relay(reader, server_writer), relay(server_reader, writer))

    server = loop.run_until_complete(asyncio.start_server(serve, "127.0.0.1", port))
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield port
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)


# -- the containers -------------------------------------------------------------------------------


@contextmanager
def containers() -> Iterator[list[str]]:
    """The names of the containers the test starts, each removed on the way out."""
    names: list[str] = []
    try:
        yield names
    finally:
        for name in names:
            docker("rm", "--force", name)


def run_in_image(
    image: str, environment: dict[str, str], home: Path, *command: str, name: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`docker run` of the image on the host's network, DAGSTER_HOME a folder of the host."""
    options = ["--network", "host", "--volume", f"{home}:{HOME_IN_IMAGE}"]
    for key, value in environment.items():
        options += ["--env", f"{key}={value}"]
    detach = ["--detach", "--name", name] if name else ["--rm"]
    return docker("run", *detach, *options, image, *command)


def test_every_process_of_the_image_runs_as_a_user_of_its_own(image):
    checked = docker(
        "run",
        "--rm",
        image,
        "sh",
        "-c",
        "id -u && jobs-pipeline --help && dagster-webserver --help && dagster-daemon --help"
        " && dagster code-server start --help",
    )
    assert checked.returncode == 0, checked.stderr[-3000:]
    assert checked.stdout.splitlines()[0] != "0", checked.stdout[:200]
    default = docker("image", "inspect", "--format", "{{json .Config.Cmd}}", image)
    assert "code-server" in default.stdout, default.stdout


def test_a_deployment_from_the_image_runs_a_job_through_the_queue(image, postgres, tmp_path):
    suffix = uuid.uuid4().hex[:8]
    app, storage = f"image_app_{suffix}", f"image_dagster_{suffix}"
    for database in (app, storage):
        postgres.ensure_database(database)
    home = tmp_path / "dagster_home"
    home.mkdir()
    home.chmod(0o777)  # written by the image's own user
    code_port, web_port = free_port(), free_port()

    with tcp_to(postgres) as db_port, containers() as names:
        server = f"postgres@127.0.0.1:{db_port}"
        dagster_env = {"DAGSTER_POSTGRES_URL": f"postgresql+psycopg2://{server}/{storage}"}
        code_env = {**dagster_env, "DATABASE_URL": f"postgresql://{server}/{app}"}

        set_up = run_in_image(
            image,
            code_env,
            home,
            "jobs-pipeline",
            "setup",
            "--create-app-tables",
            "--code-server",
            f"127.0.0.1:{code_port}",
        )
        assert set_up.returncode == 0, set_up.stdout[-3000:] + set_up.stderr[-3000:]

        code_server = f"jp-code-{suffix}"
        names.append(code_server)
        started = run_in_image(
            image,
            code_env,
            home,
            "dagster",
            "code-server",
            "start",
            "-h",
            "127.0.0.1",
            "-p",
            str(code_port),
            "-m",
            "jobs_pipeline.definitions",
            name=code_server,
        )
        assert started.returncode == 0, started.stderr
        wait_until(
            lambda: (
                docker(
                    "exec", code_server, "dagster", "api", "grpc-health-check", "-p", str(code_port)
                ).returncode
                == 0
            ),
            RUN_DEADLINE_S,
            "the code server in its container answered",
        )
        workspace = f"{HOME_IN_IMAGE}/workspace.yaml"
        for process, command in {
            "web": ["dagster-webserver", "-w", workspace, "-h", "127.0.0.1", "-p", str(web_port)],
            "daemon": ["dagster-daemon", "run", "-w", workspace],
        }.items():
            name = f"jp-{process}-{suffix}"
            names.append(name)
            launched = run_in_image(image, dagster_env, home, *command, name=name)
            assert launched.returncode == 0, launched.stderr

        wait_until(
            lambda: answers(f"http://127.0.0.1:{web_port}/server_info"),
            RUN_DEADLINE_S,
            "the webserver in its container answered",
        )
        client = DagsterGraphQLClient("127.0.0.1", port_number=web_port)
        run_id = client.submit_job_execution("global_override_check")
        status = wait_until(lambda: ended(client, run_id), RUN_DEADLINE_S, f"run {run_id} ended")
        logs = "\n".join(docker("logs", name).stderr[-2000:] for name in names)
        assert status == "SUCCESS", logs

    # Dagster's storage, on the server outside the containers, holds the run.
    with psycopg.connect(host=str(postgres.socket_dir), user="postgres", dbname=storage) as stored:
        row = stored.execute("SELECT status FROM runs WHERE run_id = %s", (run_id,)).fetchone()
    assert row == ("SUCCESS",)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except OSError:
        return False


def ended(client: DagsterGraphQLClient, run_id: str) -> str | None:
    status = client.get_run_status(run_id).value
    return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None


# -- each run in a container of its own ------------------------------------------------------------


def over_tcp(url: str, port: int, driver: str = "postgresql") -> str:
    """The same database reached at 127.0.0.1:`port`, as a container reaches it."""
    return f"{driver}://postgres@127.0.0.1:{port}/{make_url(url).database}"


def test_a_run_container_killed_after_its_first_batch_fails_and_the_next_container_does_the_rest(
    image, postgres, tmp_path, app_db_url, dagster_db_url, engine, webhook_server
):
    add_expired_users(engine, MANY_USERS)
    gate_after_first_batch(engine, MANY_BATCH)

    with (
        tcp_to(postgres) as db_port,
        running_deployment(
            tmp_path,
            app_db_url,
            over_tcp(dagster_db_url, db_port, "postgresql+psycopg2"),
            runs_in="containers",
            # The daemon's: what it launches, where, and what each run's container is given.
            DOCKER_HOST=os.environ.get("DOCKER_HOST", DOCKER_HOST),
            JOBS_PIPELINE_IMAGE=image,
            JOBS_PIPELINE_RUN_NETWORK="host",
            DATABASE_URL=over_tcp(app_db_url, db_port),
            ALERT_WEBHOOK_URL=webhook_server.url,
        ) as deployment,
    ):
        dead_id = launch(deployment, EXPIRATION_JOB, **ALL_OF_THEM)
        dead_container = wait_for(
            deployment,
            "the run's container named",
            lambda: run_record(deployment, dead_id)["tags"].get(CONTAINER_TAG),
            START_DEADLINE_S,
        )
        wait_for(
            deployment,
            "the first batch committed",
            lambda: ledger_rows(engine) == MANY_BATCH,
            START_DEADLINE_S,
        )
        killed = docker("kill", dead_container)
        assert killed.returncode == 0, killed.stderr
        # The killed run's session finishes the statement it was in, then rolls it back.
        open_gate(engine)
        next_id = launch(deployment, EXPIRATION_JOB, **ALL_OF_THEM)

        _, finished = the_next_run_did_the_rest(
            deployment, engine, webhook_server, dead_id, next_id, MANY_USERS
        )
        assert finished["tags"][CONTAINER_TAG] != dead_container
