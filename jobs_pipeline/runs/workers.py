"""A run whose worker died is failed within minutes, not left STARTED for good.

Dagster's `DefaultRunLauncher` (1.13) cannot tell whether a run's worker process still
lives: a run whose code server, or whole host, went down stays STARTED, holding its
job's place in the queue (`job_lock`) and its pool's slot, until its maximum runtime.
This closes that gap with the smallest thing that works across hosts:

- each run's worker, for as long as it executes the run, holds a shared advisory lock
  named after the run on a session of its own to Dagster's storage database (the one
  database every process of a deployment reaches);
- the daemon's run monitoring asks `WorkerCheckingRunLauncher.check_run_worker_health`
  about each STARTED run; a run whose lock has been missing for
  `worker_gone_after_seconds` is reported FAILED, so Dagster fails it, the failure
  alert sends it, and `run_monitoring.free_slots_after_run_end_seconds` frees its slot.

The session dies with the process: at once when the process is killed, and within about
a minute of a host going down (server-side TCP keepalives, set on the session). A
restart of the storage database drops every lock for a moment; each worker takes its
own again within seconds, well inside the grace.
"""

from __future__ import annotations

import contextlib
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import dagster as dg
from sqlalchemy import Connection, create_engine, text
from sqlalchemy.pool import NullPool

from jobs_pipeline.dagster_private import worker_health, worker_health_settled
from jobs_pipeline.tags import CODE_SERVER_TAG

# The advisory-lock namespace of run workers' signs of life (the writer locks use 0x4A505000).
LIVENESS_NAMESPACE = 0x4A50_5001
# How often a worker checks that its session (and so its lock) is still there.
RECHECK_SECONDS = 5.0
# A worker gone this long is failed: well past a storage restart or a slow start.
DEFAULT_WORKER_GONE_AFTER_SECONDS = 60

# The server drops the session of a host that stopped answering within about a minute
# (each applies to TCP only; tcp_user_timeout needs PostgreSQL 12).
KEEPALIVE_SETTINGS = (
    "SET tcp_keepalives_idle = 20",
    "SET tcp_keepalives_interval = 10",
    "SET tcp_keepalives_count = 3",
    "SET tcp_user_timeout = 60000",
)


def liveness_key(run_id: str) -> tuple[int, int]:
    return LIVENESS_NAMESPACE, zlib.crc32(run_id.encode()) & 0x7FFF_FFFF


def storage_url(instance: dg.DagsterInstance) -> str | None:
    """Dagster's storage database, when it is PostgreSQL (a deployment's, or `make dev`'s)."""
    url = getattr(instance.run_storage, "postgres_url", None)
    return url if isinstance(url, str) else None


# -- in the run worker ------------------------------------------------------------------------


class SignOfLife:
    """The run worker's shared lock, held on a session of its own by a background thread
    that takes it again whenever the session was lost (the storage database restarted).
    """

    def __init__(self, url: str, run_id: str):
        self._engine = create_engine(
            url,
            poolclass=NullPool,
            connect_args={"application_name": f"jobs_pipeline worker {run_id}"[:63]},
        )
        self._key = liveness_key(run_id)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._hold, name="run-sign-of-life", daemon=True)
        self._connection: Connection | None = None

    def start(self) -> None:
        self._take()  # before the first step: the check may look as soon as the run starts
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=RECHECK_SECONDS * 2)
        self._drop()
        self._engine.dispose()

    def _hold(self) -> None:
        while not self._stop.wait(RECHECK_SECONDS):
            try:
                if self._connection is None:
                    self._take()
                else:
                    self._connection.execute(text("SELECT 1"))
            except Exception:
                self._drop()  # taken again at the next check

    def _take(self) -> None:
        """Connects and takes the lock; on failure, leaves it for the next check."""
        with contextlib.suppress(Exception):
            connection = self._engine.connect().execution_options(isolation_level="AUTOCOMMIT")
            for setting in KEEPALIVE_SETTINGS:
                with contextlib.suppress(Exception):  # an older server lacks one
                    connection.execute(text(setting))
            connection.execute(
                text("SELECT pg_advisory_lock_shared(:namespace, :key)"),
                {"namespace": self._key[0], "key": self._key[1]},
            )
            self._connection = connection

    def _drop(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.invalidate()  # the session ends: the lock goes with it
            self._connection = None


@contextlib.contextmanager
def sign_of_life(instance: dg.DagsterInstance, run_id: str) -> Iterator[None]:
    url = storage_url(instance)
    if url is None:  # a temporary instance: nobody monitors it
        yield
        return
    held = SignOfLife(url, run_id)
    held.start()
    try:
        yield
    finally:
        held.stop()


class WorkerWithSignOfLife(dg.Executor):
    """Dagster's in-process executor, holding the run's sign of life while it executes."""

    def __init__(self, inner: dg.Executor):
        self._inner = inner

    def execute(self, plan_context: Any, execution_plan: Any) -> Iterator[dg.DagsterEvent]:
        with sign_of_life(plan_context.instance, plan_context.run_id):
            yield from self._inner.execute(plan_context, execution_plan)

    @property
    def retries(self) -> Any:
        return self._inner.retries


def _create_executor(init_context: dg.InitExecutorContext) -> dg.Executor:
    create_in_process = dg.in_process_executor.executor_creation_fn
    if create_in_process is None:
        raise RuntimeError("Dagster's in-process executor has no creation function")
    return WorkerWithSignOfLife(create_in_process(init_context))


run_worker_executor = dg.ExecutorDefinition(
    name="in_process",
    config_schema=dg.in_process_executor.config_schema.as_field(),
    executor_creation_fn=_create_executor,
    description=(
        "Every step in the run's own process (each job is one op over SQL), the run's worker"
        " holding a sign of life the daemon checks."
    ),
)


# -- in the daemon ----------------------------------------------------------------------------


def worker_alive(connection: Connection, run_id: str) -> bool:
    namespace, key = liveness_key(run_id)
    held = connection.execute(
        text(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
            " AND classid = :namespace AND objid = :key AND objsubid = 2"
        ),
        {"namespace": namespace, "key": key},
    ).scalar_one()
    return bool(held)


def workers_alive(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, bool] | None:
    """Whether each run's worker shows a sign of life; None when the storage cannot tell
    (not PostgreSQL, or unreachable just now).
    """
    if storage_url(instance) is None:
        return None
    try:
        with instance.run_storage.connect() as connection:  # type: ignore[attr-defined]
            return {run_id: worker_alive(connection, run_id) for run_id in run_ids}
    except Exception:
        return None


# The one setting every launcher of this project adds to its own.
WORKER_GONE_FIELD = {
    "worker_gone_after_seconds": dg.Field(
        int,
        is_required=False,
        default_value=DEFAULT_WORKER_GONE_AFTER_SECONDS,
        description="A run whose worker shows no sign of life this long is failed.",
    )
}


class WorkerWatch:
    """The daemon's side of the sign of life, for any run launcher: how long each STARTED
    run's worker has shown none, and the health answer that follows. A launcher asks it
    about the runs it cannot judge itself (a Celery task stays STARTED when its worker is
    killed whole; a Docker daemon on a dead host does not answer).
    """

    def __init__(self, worker_gone_after_seconds: int = DEFAULT_WORKER_GONE_AFTER_SECONDS):
        self.worker_gone_after_seconds = worker_gone_after_seconds
        self._missing_since: dict[str, float] = {}

    def after_launcher(
        self, instance: dg.DagsterInstance, run: dg.DagsterRun, launchers_answer: Callable[[], Any]
    ) -> Any:
        """The launcher's own answer where it settles the question (the worker succeeded,
        failed, is known gone); the sign of life where it cannot (running, unknown, no answer).
        """
        try:
            answer = launchers_answer()
        except Exception:
            return self.health(instance, run)
        return answer if worker_health_settled(answer) else self.health(instance, run)

    def health(self, instance: dg.DagsterInstance, run: dg.DagsterRun) -> Any:
        alive = workers_alive(instance, [run.run_id])
        if alive is None or alive[run.run_id]:
            self._missing_since.pop(run.run_id, None)
            return worker_health(True, "its worker shows a sign of life")
        now = time.time()
        missing_for = now - self._missing_since.setdefault(run.run_id, now)
        if missing_for < self.worker_gone_after_seconds:
            return worker_health(True, f"no sign of life for {missing_for:.0f} s")
        self._missing_since.pop(run.run_id, None)
        return worker_health(
            False,
            f"The run's worker process is gone: no sign of life for over"
            f" {self.worker_gone_after_seconds} s (it was killed, ran out of memory, or its"
            " code server, container or host went down). Its next run does the rest of the"
            " work.",
        )


class ChecksItsWorkersToo:
    """Mixed into a Dagster launcher that checks its own workers (Docker, Celery): its
    answer where it settles the question, the run's sign of life where it cannot. The
    launcher takes `worker_gone_after_seconds` beside its own settings and keeps a
    `WorkerWatch` as `_watch`.
    """

    _watch: WorkerWatch
    _instance: Any

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Mapping[str, Any]) -> Any:
        return cls(inst_data=inst_data, **config_value)  # type: ignore[call-arg]

    def check_run_worker_health(self, run: dg.DagsterRun) -> Any:
        own_answer = super().check_run_worker_health  # type: ignore[misc]
        return self._watch.after_launcher(self._instance, run, lambda: own_answer(run))


class WorkerCheckingRunLauncher(dg.DefaultRunLauncher):
    """The `DefaultRunLauncher` (runs start in the code server's run workers), plus a health
    check of each run's worker for the daemon's run monitoring.
    """

    def __init__(
        self,
        inst_data: Any = None,
        worker_gone_after_seconds: int = DEFAULT_WORKER_GONE_AFTER_SECONDS,
    ):
        super().__init__(inst_data=inst_data)
        self._watch = WorkerWatch(worker_gone_after_seconds)

    @classmethod
    def config_type(cls) -> Any:
        return WORKER_GONE_FIELD

    @classmethod
    def from_config_value(cls, inst_data: Any, config_value: Mapping[str, Any]) -> Any:
        return cls(inst_data=inst_data, **config_value)

    @property
    def supports_check_run_worker_health(self) -> bool:
        return True

    def check_run_worker_health(self, run: dg.DagsterRun) -> Any:
        # Only the runs this launcher started hold a sign of life; one executed in a CLI's
        # own process is that process's to end.
        if CODE_SERVER_TAG not in run.tags:
            return worker_health(True, "not started by a code server")
        return self._watch.health(self._instance, run)
