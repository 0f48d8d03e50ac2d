"""The admin HTTP API: run a job now, list the jobs, for the app's admins.

    POST /api/admin/jobs/{name}   run the job through Dagster; {"dry_run": true} optional
    GET  /api/admin/jobs          every job with its schedule and last run
    GET  /api/admin/openapi.json  this API, described

Callers present `Authorization: Bearer <token>` (`jobs-pipeline token create`).
Whether the caller is an admin is read from the app's `users.role` at every request.
Answers never carry a stack trace or a secret; failed authentications are logged
without the token.
"""

import json
import logging
import threading
from typing import Any

from sqlalchemy import Engine
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from jobs_pipeline.alerting import redact
from jobs_pipeline.api_tokens import Caller, authenticate
from jobs_pipeline.jobs.reporting import seed_name
from jobs_pipeline.launch import LaunchError, plan_launch, run_now

log = logging.getLogger("jobs_pipeline.admin_api")


def error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def job_catalog() -> dict[str, Any]:
    """Dagster job name -> job, for every job users can run."""
    from jobs_pipeline.definitions import defs
    from jobs_pipeline.jobs.scheduling import is_maintenance_job

    return {job.name: job for job in defs.resolve_all_job_defs() if is_maintenance_job(job)}


def find_job(name: str) -> Any | None:
    """Either spelling: `tier-expiration` or `tier_expiration`."""
    return job_catalog().get(name.strip().replace("-", "_"))


class AdminApi:
    def __init__(self, app_engine: Engine):
        self.app_engine = app_engine

    def caller(self, request: Request) -> Caller | JSONResponse:
        token = bearer_token(request)
        if token is None:
            log.warning("admin API: no bearer token from %s", client_of(request))
            return error(401, "Missing bearer token")
        with self.app_engine.begin() as connection:
            caller = authenticate(connection, token)
        if caller is None:
            log.warning("admin API: unknown or revoked token from %s", client_of(request))
            return error(401, "Invalid or revoked token")
        if not caller.is_admin:
            log.warning("admin API: %s is not an admin", caller.email)
            return error(403, "Forbidden")
        return caller

    async def run_job(self, request: Request) -> JSONResponse:
        caller = await run_in_threadpool(self.caller, request)
        if isinstance(caller, JSONResponse):
            return caller
        job = find_job(request.path_params["name"])
        if job is None:
            return error(404, "Job not found")
        options = await read_options(request)
        if isinstance(options, JSONResponse):
            return options
        try:
            plan = await run_in_threadpool(
                plan_launch,
                job,
                dry_run=options["dry_run"],
                user=options["user"],
                allow_large=options["allow_large"],
                app_engine=self.app_engine,
            )
        except LaunchError as refusal:
            return error(400, str(refusal))
        outcome = await run_in_threadpool(run_now, job, plan, triggered_by=f"api:{caller.email}")
        if not outcome.success:
            message = redact(outcome.error or "the run failed")
            return JSONResponse({"error": message, "run_id": outcome.run_id}, status_code=500)
        return JSONResponse({"success": True, "result": outcome.result, "run_id": outcome.run_id})

    async def list_jobs(self, request: Request) -> JSONResponse:
        caller = await run_in_threadpool(self.caller, request)
        if isinstance(caller, JSONResponse):
            return caller
        return JSONResponse({"jobs": await run_in_threadpool(jobs_with_last_runs)})


# In-process runs from two threads at once were seen to hang Dagster in a test; the
# API runs one at a time (each job is short, and the queue serializes runs anyway).
_runs = threading.Lock()


def run_one_at_a_time(job: Any, plan: Any, *, triggered_by: str) -> Any:
    with _runs:
        return run_now(job, plan, triggered_by=triggered_by)


async def read_options(request: Request) -> dict[str, Any] | JSONResponse:
    """`{"dry_run": bool, "user": str, "allow_large": bool}`, all optional; an empty
    body is fine.
    """
    body = await request.body()
    if not body.strip():
        return {"dry_run": False, "user": None, "allow_large": False}
    try:
        options = json.loads(body)
    except ValueError:
        return error(400, "The body must be a JSON object")
    if not isinstance(options, dict):
        return error(400, "The body must be a JSON object")
    unknown = set(options) - {"dry_run", "user", "allow_large"}
    if unknown:
        return error(400, f"Unknown option(s): {', '.join(sorted(map(str, unknown)))}")
    dry_run, user = options.get("dry_run", False), options.get("user")
    allow_large = options.get("allow_large", False)
    if not isinstance(dry_run, bool) or not isinstance(allow_large, bool):
        return error(400, "dry_run and allow_large must be true or false")
    if user is not None and (not isinstance(user, str) or not user.strip()):
        return error(400, "user must be a user's id or email")
    return {"dry_run": dry_run, "user": user, "allow_large": allow_large}


def jobs_with_last_runs() -> list[dict[str, Any]]:
    import os

    import dagster as dg

    from jobs_pipeline.definitions import defs

    schedules = {
        s.job_name: s for s in defs.schedules or [] if isinstance(s, dg.ScheduleDefinition)
    }
    instance = dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else None
    listed = []
    for name, job in sorted(job_catalog().items()):
        schedule = schedules.get(name)
        listed.append(
            {
                "name": seed_name(name),
                "dagster_job": name,
                "schedule": str(schedule.cron_schedule) if schedule else None,
                "timezone": schedule.execution_timezone if schedule else None,
                "priority": job.tags.get("priority"),
                "last_run": last_run(instance, name),
            }
        )
    return listed


def last_run(instance: Any, job_name: str) -> dict[str, Any] | None:
    import dagster as dg

    if instance is None:
        return None
    records = instance.get_run_records(filters=dg.RunsFilter(job_name=job_name), limit=1)
    if not records:
        return None
    record = records[0]
    return {
        "run_id": record.dagster_run.run_id,
        "status": record.dagster_run.status.value,
        "started_at": record.start_time,
        "ended_at": record.end_time,
    }


def client_of(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def openapi(_request: Request) -> JSONResponse:
    return JSONResponse(OPENAPI)


ERROR = {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]}
OPENAPI: dict[str, Any] = {
    "openapi": "3.0.3",
    "info": {"title": "jobs-pipeline admin API", "version": "1"},
    "components": {
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "schemas": {"Error": ERROR},
    },
    "security": [{"bearer": []}],
    "paths": {
        "/api/admin/jobs": {
            "get": {
                "summary": "Every job with its schedule and last run",
                "responses": {
                    "200": {"description": "The jobs"},
                    "401": {"description": "No, unknown or revoked token"},
                    "403": {"description": "The caller is not an admin"},
                },
            }
        },
        "/api/admin/jobs/{name}": {
            "post": {
                "summary": "Run a job now, through Dagster",
                "parameters": [
                    {"name": "name", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "dry_run": {"type": "boolean"},
                                    "user": {"type": "string"},
                                    "allow_large": {"type": "boolean"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {"description": "{success: true, result, run_id}"},
                    "400": {
                        "description": "Bad options",
                        "content": {"application/json": {"schema": ERROR}},
                    },
                    "401": {"description": "No, unknown or revoked token"},
                    "403": {"description": "The caller is not an admin"},
                    "404": {"description": "Job not found"},
                    "500": {"description": "The run failed: {error, run_id}"},
                },
            }
        },
    },
}


def create_app(app_engine: Engine) -> Starlette:
    api = AdminApi(app_engine)
    routes: list[Route] = [
        Route("/api/admin/jobs", api.list_jobs, methods=["GET"]),
        Route("/api/admin/jobs/{name}", api.run_job, methods=["POST"]),
        Route("/api/admin/openapi.json", openapi, methods=["GET"]),
    ]
    return Starlette(routes=routes, exception_handlers={Exception: internal_error})


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """Anything unforeseen: logged here, answered without a trace or a secret."""
    log.exception("admin API: %s %s failed", request.method, request.url.path)
    return error(
        500, redact(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
    )
