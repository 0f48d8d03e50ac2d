"""`setup`, `doctor` and `metrics`: a deployment prepared, checked and watched."""

import os
import sys
from pathlib import Path

from jobs_pipeline.interfaces.cli.common import EXIT_FAILED, UsageError
from jobs_pipeline.interfaces.cli.runs import prepare_app_database
from jobs_pipeline.storage.embedded import (
    fill_environment,
)


def deployment_instance_environment(command: str) -> None:
    """`DATABASE_URL` and the instance in `DAGSTER_HOME` (or `dev`'s for the same app
    database): what `setup` and `doctor` work on.
    """
    prepare_app_database(schema=False)
    if not os.environ.get("DAGSTER_HOME"):
        raise UsageError(
            f"{command} works on a Dagster instance: set DAGSTER_HOME (docs/deploying.md), or"
            " start `jobs-pipeline dev` first and it uses dev's"
        )
    fill_environment(dagster_storage=True)


def command_setup(code_server: str, *, create_app_tables: bool, runs_in: str) -> int:
    from jobs_pipeline.deployment.setup import SetupRefused, parse_address, set_up

    try:
        parse_address(code_server)
    except ValueError as error:
        raise UsageError(str(error)) from None
    deployment_instance_environment("setup")
    try:
        set_up(
            os.environ["DATABASE_URL"],
            Path(os.environ["DAGSTER_HOME"]),
            code_server=code_server,
            create_app_tables=create_app_tables,
            write=print,
            runs_in=runs_in,
        )
    except SetupRefused as refusal:
        print(f"jobs-pipeline: setup: {refusal}", file=sys.stderr)
        return EXIT_FAILED
    return 0


def command_doctor() -> int:
    from jobs_pipeline.definitions import defs
    from jobs_pipeline.deployment.doctor import check_deployment

    deployment_instance_environment("doctor")
    home = Path(os.environ["DAGSTER_HOME"])
    healthy = check_deployment(os.environ["DATABASE_URL"], home, defs, print)
    return 0 if healthy else EXIT_FAILED


def command_metrics(host: str, port: int) -> int:
    """Serves until SIGTERM or Ctrl-C, then exits 0: being stopped is how it ends."""
    import dagster as dg

    from jobs_pipeline.definitions import defs
    from jobs_pipeline.deployment.metrics import metrics_registry, serve
    from jobs_pipeline.storage.engine import create_app_engine

    deployment_instance_environment("metrics")
    engine = create_app_engine(os.environ["DATABASE_URL"])

    def ready(url: str) -> None:
        print(f"jobs-pipeline: Prometheus metrics on {url}", file=sys.stderr, flush=True)

    try:
        with dg.DagsterInstance.get() as instance:
            serve(metrics_registry(instance, engine, defs), host, port, ready)
    except KeyboardInterrupt:
        print("jobs-pipeline: metrics: stopped", file=sys.stderr)
    except OSError as error:
        print(f"jobs-pipeline: metrics: cannot serve on {host}:{port}: {error}", file=sys.stderr)
        return EXIT_FAILED
    finally:
        engine.dispose()
    return 0
