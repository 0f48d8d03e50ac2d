"""`jobs-pipeline setup`: a deployment's storage prepared in one pass, safe to run again.

In order: the app database has the app's tables (the app's migrations make them; a
trial may lay the contract's schema into an empty database), else nothing is done;
`DAGSTER_HOME` holds the project's `dagster.yaml` and a workspace file naming the code
server (written when missing, kept when there); the project's schema `jobs_pipeline` is
at head; Dagster's storage has its tables and every pool a job writes through has its
limit row, before two runs race to create one (a race that crashes one of them on a
fresh storage).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg
import yaml

from jobs_pipeline.definitions import defs
from jobs_pipeline.deployment.run_launchers import DEFAULT_RUNS_IN, instance_config_text
from jobs_pipeline.runs.status import job_pools
from jobs_pipeline.storage.app_database_setup import (
    AppTablesMissing,
    create_app_schema,
    missing_app_tables,
    setup_engine,
)
from jobs_pipeline.storage.app_tables import app_metadata
from jobs_pipeline.storage.embedded import INSTANCE_CONFIG
from jobs_pipeline.storage.schema_migrations import upgrade

LOCATION_NAME = "jobs_pipeline"
DEFAULT_CODE_SERVER = "127.0.0.1:4000"
POOL_LIMIT = 1  # one writer per app table


class SetupRefused(RuntimeError):
    """What setup found that only the operator can put right; nothing after it was done."""


def set_up(
    app_url: str,
    home: Path,
    *,
    code_server: str,
    create_app_tables: bool,
    write: Callable[[str], Any],
    runs_in: str = DEFAULT_RUNS_IN,
) -> None:
    prepare_app_database(app_url, create_app_tables=create_app_tables, write=write)
    write_instance_files(home, code_server, write, runs_in)
    write(f"schema jobs_pipeline: at revision {upgrade(app_url)}")
    with dg.DagsterInstance.get() as instance:
        prepare_instance(instance, write)
    write(
        "ready: start the code server, wait for it to answer, then the webserver and the"
        " daemon (docs/deploying.md); `jobs-pipeline doctor` checks the lot"
    )


def write_instance_files(
    home: Path, code_server: str, write: Callable[[str], Any], runs_in: str = DEFAULT_RUNS_IN
) -> None:
    home.mkdir(parents=True, exist_ok=True)
    if not INSTANCE_CONFIG.exists():
        raise SetupRefused(
            f"the project's deploy/dagster.yaml is not at {INSTANCE_CONFIG}: run setup from"
            " the project's checkout"
        )
    project_text = instance_config_text(runs_in)
    instance_yaml = home / "dagster.yaml"
    described = f"the project's dagster.yaml, runs in {runs_in}"
    if not instance_yaml.exists():
        instance_yaml.write_text(project_text)
        write(f"{instance_yaml}: {described}")
    elif yaml.safe_load(instance_yaml.read_text()) != yaml.safe_load(project_text):
        write(
            f"{instance_yaml}: kept; it differs from {described} (compare them: a new version"
            " may bring new settings, or the runs were set to execute elsewhere)"
        )
    else:
        write(f"{instance_yaml}: {described}")
    workspace = home / "workspace.yaml"
    if workspace.exists():
        write(f"{workspace}: kept")
        return
    host, port = parse_address(code_server)
    document = {
        "load_from": [{"grpc_server": {"host": host, "port": port, "location_name": LOCATION_NAME}}]
    }
    workspace.write_text(yaml.safe_dump(document, sort_keys=False))
    write(f"{workspace}: the code server at {host}:{port}")


def parse_address(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--code-server {address!r} is not HOST:PORT (e.g. {DEFAULT_CODE_SERVER})")
    return host, int(port)


def prepare_app_database(
    app_url: str, *, create_app_tables: bool, write: Callable[[str], Any]
) -> None:
    with setup_engine(app_url) as engine:
        missing = missing_app_tables(engine)
        if not missing:
            write("app database: the app's tables are there")
            return
        if not create_app_tables:
            raise SetupRefused(str(AppTablesMissing(missing)))
        if len(missing) < len(app_metadata.tables):
            raise SetupRefused(
                f"--create-app-tables lays the app's schema only into an empty database; this"
                f" one has some of the app's tables and lacks {', '.join(missing)}"
            )
        create_app_schema(engine)
        write(
            "app database: laid the app's schema (for a trial: in production the app's own"
            " migrations own it)"
        )


def prepare_instance(instance: dg.DagsterInstance, write: Callable[[str], Any]) -> None:
    """Dagster's tables (made when the instance first opens), and each pool's limit row."""
    storage = instance.event_log_storage
    if instance.is_ephemeral or not storage.supports_global_concurrency_limits:
        raise SetupRefused(
            "DAGSTER_HOME's instance keeps no lasting storage with pools: its dagster.yaml"
            " must be the project's (PostgreSQL storage, DAGSTER_POSTGRES_URL)"
        )
    limits = {limit.name: limit.limit for limit in storage.get_pool_limits()}
    for pool in job_pools(defs.resolve_all_job_defs()):
        if pool in limits:
            write(f"pool {pool}: limit {limits[pool]} (kept)")
        else:
            storage.set_concurrency_slots(pool, POOL_LIMIT)
            write(f"pool {pool}: limit {POOL_LIMIT}")
