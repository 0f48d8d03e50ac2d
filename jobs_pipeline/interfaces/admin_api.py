"""The admin HTTP API: start a job, follow its run, list the jobs, for the app's admins.

    POST /api/admin/jobs/{name}   start the job; {"dry_run", "user", "allow_large"} optional
    GET  /api/admin/runs/{run_id} where a run stands, and its result once it has ended
    GET  /api/admin/jobs          every job with its schedule and last run
    GET  /api/admin/openapi.json  this API, generated from the models below
    GET  /metrics                 Prometheus metrics, without a token (`deployment/metrics.py`)
    /door/...                     with `--ui`: the door in front of the Dagster UI (`door/`)

Runs go onto the Dagster instance's queue, as a schedule's or the UI's do, and a
daemon's run worker executes them: the API never runs a job in its own process, so
any number of requests at once are answered, and a run waits for its job's and its
table's turn like any other. A request waits for its run up to `wait_seconds`; a run
still queued or going then is answered 202 with its status URL.

Callers present `Authorization: Bearer <token>` (`jobs-pipeline token create`).
Whether the caller is an admin is read from the app's `users.role` at every request.
Answers never carry a stack trace or a secret; failed authentications are logged
without the token.
"""

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any, Literal

import dagster as dg
from fastapi import APIRouter, Body, Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client.exposition import choose_encoder
from pydantic import BaseModel, ConfigDict, Field, StrictBool
from sqlalchemy import Engine

from jobs_pipeline.definitions import defs
from jobs_pipeline.deployment.metrics import metrics_registry
from jobs_pipeline.formats import display_name, first_line
from jobs_pipeline.interfaces.door.arrival import client_address
from jobs_pipeline.interfaces.door.routes import router as door_routes
from jobs_pipeline.interfaces.door.session import DoorSettings
from jobs_pipeline.interfaces.door.state import opened_door
from jobs_pipeline.interfaces.launching.execution import RunQueue
from jobs_pipeline.interfaces.launching.instance import daemon_serves
from jobs_pipeline.interfaces.launching.plans import (
    LaunchError,
    job_catalog,
    latest_run,
    plan_launch,
)
from jobs_pipeline.job_parts.scheduling import priority_of, schedules_by_job
from jobs_pipeline.redaction import redact
from jobs_pipeline.runs.outcomes import RunOutcome, outcome_of
from jobs_pipeline.storage.api_tokens import Caller, authenticate
from jobs_pipeline.tags import DRY_RUN_TAG

log = logging.getLogger("jobs_pipeline.admin_api")

DEFAULT_WAIT_SECONDS = 30.0
POLL_SECONDS = 0.5


# -- the models: the request and every answer, declared once ---------------------------------


class RunOptions(BaseModel):
    """How to run the job; every field is optional and the body may be left empty."""

    model_config = ConfigDict(extra="forbid")

    dry_run: StrictBool = Field(default=False, description="Change nothing; report what would.")
    user: str | None = Field(
        default=None,
        min_length=1,
        pattern=r"\S",
        description="Only for discipline-stats-rollup: one user's id or email.",
    )
    allow_large: StrictBool = Field(
        default=False,
        description="Let tier-expiration or promo-cleanup go past its blast-radius guard.",
    )
    as_of: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Dry runs of tier-expiration, global-override-check, promo-cleanup and"
            " trial-reminder only: evaluate the job's rule as if it ran at this ISO-8601 time"
            " (with an offset or Z)."
        ),
    )


class ErrorAnswer(BaseModel):
    error: str


class RunSucceeded(BaseModel):
    success: Literal[True] = True
    result: dict[str, Any] | None = Field(description="The job's Result: JSON.")
    run_id: str


class RunFailed(BaseModel):
    error: str = Field(description="The first line of what made the run fail.")
    run_id: str


class RunPending(BaseModel):
    run_id: str
    status: str = Field(description="Dagster's run status: QUEUED, STARTING, STARTED, ...")
    status_url: str = Field(description="GET it for the run's status and, once ended, result.")
    detail: str


class RunStatus(BaseModel):
    run_id: str
    job: str
    status: str
    result: dict[str, Any] | None = None
    error: str | None = None


class LastRun(BaseModel):
    run_id: str
    status: str
    dry_run: bool
    started_at: float | None
    ended_at: float | None


class JobListing(BaseModel):
    name: str
    dagster_job: str
    schedule: str | None
    timezone: str | None
    priority: str | None
    last_run: LastRun | None


class JobList(BaseModel):
    jobs: list[JobListing]


class ApiError(Exception):
    """Answered as `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorAnswer, "description": "No, unknown or revoked token"},
    403: {"model": ErrorAnswer, "description": "The caller is not an admin"},
}


# -- what the endpoints share ---------------------------------------------------------------


class AdminApi:
    """The API's state: the app database (tokens, users), the instance and its queue."""

    def __init__(
        self,
        app_engine: Engine,
        queue: RunQueue,
        wait_seconds: float,
        stopping: Callable[[], bool] = lambda: False,
    ):
        self.app_engine = app_engine
        self.queue = queue
        self.wait_seconds = wait_seconds
        self.stopping = stopping
        self.metrics = metrics_registry(queue.instance, app_engine, defs)

    @property
    def instance(self) -> dg.DagsterInstance:
        return self.queue.instance

    def authenticate(self, token: str | None, client: str) -> Caller:
        """The caller of a request, once its token and its user's role say it is an admin."""
        if not token:
            log.warning("admin API: no bearer token from %s", client)
            raise ApiError(401, "Missing bearer token")
        with self.app_engine.begin() as connection:
            caller = authenticate(connection, token)
        if caller is None:
            log.warning("admin API: unknown or revoked token from %s", client)
            raise ApiError(401, "Invalid or revoked token")
        if not caller.is_admin:
            log.warning("admin API: %s is not an admin", caller.email)
            raise ApiError(403, "Forbidden")
        return caller

    def start(self, job: dg.JobDefinition, options: RunOptions, caller: Caller) -> str:
        try:
            plan = plan_launch(
                job,
                dry_run=options.dry_run,
                user=options.user,
                allow_large=options.allow_large,
                app_engine=self.app_engine,
                as_of=options.as_of,
                spell=str,  # the body's own keys: `as_of`, `dry_run`
            )
        except LaunchError as refusal:
            raise ApiError(400, str(refusal)) from None
        run_id = self.queue.submit(job.name, plan, triggered_by=f"api:{caller.email}")
        log.info("admin API: %s started %s, run %s", caller.email, job.name, run_id)
        return run_id

    async def wait(self, run_id: str) -> RunOutcome:
        """The run's outcome once it has ended, or where it stands after `wait_seconds`,
        or at once when the server is stopping: a waiting caller is answered (202, the run
        goes on) before the server closes, rather than cut off with an error that would
        read as the run's.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.wait_seconds
        while True:
            outcome = await run_in_threadpool(outcome_of, self.instance, run_id)
            if outcome is None:
                raise LookupError(f"run {run_id} is not in the instance")
            if outcome.finished or loop.time() >= give_up or self.stopping():
                return outcome
            await asyncio.sleep(POLL_SECONDS)

    def pending_detail(self) -> str:
        if self.stopping():
            return (
                "The admin API is stopping; the run goes on. Follow it in Dagster's UI, or"
                " at the status URL once the API is back."
            )
        if daemon_serves(self.instance):
            return "The run has not ended yet; it waits in the queue or is going."
        return (
            "No Dagster daemon serves this instance: the run waits in the queue until one"
            " starts (dagster-daemon run)."
        )


def run_answer(outcome: RunOutcome, api: AdminApi) -> JSONResponse:
    """200 with the result, 500 with the first error line, or 202 while it goes on."""
    if outcome.success:
        answer = RunSucceeded(result=outcome.result, run_id=outcome.run_id)
        return JSONResponse(answer.model_dump(), status_code=200)
    if outcome.finished:
        failed = RunFailed(error=redact(outcome.error or "the run failed"), run_id=outcome.run_id)
        return JSONResponse(failed.model_dump(), status_code=500)
    pending = RunPending(
        run_id=outcome.run_id,
        status=outcome.status,
        status_url=status_path(outcome.run_id),
        detail=api.pending_detail(),
    )
    return JSONResponse(pending.model_dump(), status_code=202)


def status_path(run_id: str) -> str:
    return f"/api/admin/runs/{run_id}"


# -- the routes --------------------------------------------------------------------------

# The bearer header, read by FastAPI (and so declared in the OpenAPI document); a missing
# or malformed one is answered by `AdminApi.authenticate`, in this API's own words.
bearer = HTTPBearer(auto_error=False, description="A token from `jobs-pipeline token create`")
routes = APIRouter()


def current_api(request: Request) -> AdminApi:
    """The API's state, made once by the app's lifespan."""
    api: AdminApi = request.app.state.api
    return api


async def admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
    state: Annotated[AdminApi, Depends(current_api)],
) -> Caller:
    token = credentials.credentials if credentials is not None else None
    return await run_in_threadpool(state.authenticate, token, client_address(request))


@routes.post(
    "/api/admin/jobs/{name}",
    summary="Start a job and wait for its run (up to the server's limit)",
    response_model=RunSucceeded,
    responses={
        202: {"model": RunPending, "description": "The run is queued or still going"},
        400: {"model": ErrorAnswer, "description": "Bad options"},
        **ERRORS,
        404: {"model": ErrorAnswer, "description": "Job not found"},
        500: {"model": RunFailed, "description": "The run failed"},
    },
)
async def run_job(
    name: str,
    caller: Annotated[Caller, Depends(admin)],
    state: Annotated[AdminApi, Depends(current_api)],
    options: Annotated[RunOptions, Body()] = RunOptions(),  # noqa: B008 - immutable
) -> JSONResponse:
    job = job_catalog().get(name.strip().replace("-", "_"))
    if job is None:
        raise ApiError(404, "Job not found")
    run_id = await run_in_threadpool(state.start, job, options, caller)
    return run_answer(await state.wait(run_id), state)


@routes.get(
    "/api/admin/runs/{run_id}",
    summary="Where a run stands; its result or error once it has ended",
    response_model=RunStatus,
    responses={**ERRORS, 404: {"model": ErrorAnswer, "description": "No such run"}},
)
async def run_status(
    run_id: str,
    _caller: Annotated[Caller, Depends(admin)],
    state: Annotated[AdminApi, Depends(current_api)],
) -> RunStatus:
    run = await run_in_threadpool(state.instance.get_run_by_id, run_id)
    outcome = await run_in_threadpool(outcome_of, state.instance, run_id)
    if run is None or outcome is None:
        raise ApiError(404, "Run not found")
    return RunStatus(
        run_id=run_id,
        job=display_name(run.job_name),
        status=outcome.status,
        result=outcome.result,
        error=redact(outcome.error) if outcome.error else None,
    )


@routes.get(
    "/api/admin/jobs",
    summary="Every job with its schedule and last run",
    response_model=JobList,
    responses=ERRORS,
)
async def list_jobs(
    _caller: Annotated[Caller, Depends(admin)],
    state: Annotated[AdminApi, Depends(current_api)],
) -> JobList:
    return JobList(jobs=await run_in_threadpool(jobs_with_last_runs, state.instance))


@routes.get("/metrics", include_in_schema=False)
async def metrics(request: Request, state: Annotated[AdminApi, Depends(current_api)]) -> Response:
    """The deployment's Prometheus metrics, as `jobs-pipeline metrics` serves them. Without
    a token, as Prometheus scrapes: they carry counts, ages and run ids, never an email or a
    secret. Not in the OpenAPI document, which describes the admins' API.
    """
    # The format Prometheus asks for (OpenMetrics, or the text format), as
    # prometheus_client's own server answers it.
    encode, content_type = choose_encoder(request.headers.get("accept", ""))
    body = await run_in_threadpool(encode, state.metrics)
    return Response(body, headers={"Content-Type": content_type})


# -- the app ---------------------------------------------------------------------------------


def create_app(
    app_engine: Engine,
    instance: dg.DagsterInstance,
    wait_seconds: float = DEFAULT_WAIT_SECONDS,
    stopping: Callable[[], bool] = lambda: False,
    door: DoorSettings | None = None,
) -> FastAPI:
    """The API over one instance; its queue's code location is loaded once, at start.
    `stopping` says when the server has been told to stop (SIGTERM, Ctrl-C). With `door`,
    it also serves the door in front of the Dagster UI (`interfaces/door/`).
    """

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            queue = stack.enter_context(RunQueue(instance))
            app.state.api = AdminApi(app_engine, queue, wait_seconds, stopping)
            if door is not None:
                await stack.enter_async_context(opened_door(app, door, app_engine, instance))
            if not daemon_serves(instance):
                log.warning(
                    "admin API: no Dagster daemon serves this instance yet; runs wait in its"
                    " queue until one does"
                )
            yield

    app = FastAPI(
        title="jobs-pipeline admin API",
        version="2",
        openapi_url="/api/admin/openapi.json",
        docs_url=None,  # the interactive pages load scripts from a CDN
        redoc_url=None,
        lifespan=lifespan,
    )
    app.include_router(routes)
    if door is not None:
        app.include_router(door_routes)
    app.openapi = lambda: openapi_document(app)  # type: ignore[method-assign]
    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(RequestValidationError, bad_request)
    app.add_exception_handler(Exception, internal_error)
    return app


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """FastAPI's document, without the 422 it adds to every route: a bad body is a 400."""
    if app.openapi_schema is None:
        document = get_openapi(title=app.title, version=app.version, routes=app.routes)
        for path in document["paths"].values():
            for operation in path.values():
                operation["responses"].pop("422", None)
        schemas = document.get("components", {}).get("schemas", {})
        for unused in ("HTTPValidationError", "ValidationError"):
            schemas.pop(unused, None)
        app.openapi_schema = document
    return app.openapi_schema


def jobs_with_last_runs(instance: dg.DagsterInstance) -> list[JobListing]:
    schedules = schedules_by_job(defs)
    listed = []
    for name, job in job_catalog().items():
        schedule = schedules.get(name)
        listed.append(
            JobListing(
                name=display_name(name),
                dagster_job=name,
                schedule=str(schedule.cron_schedule) if schedule else None,
                timezone=schedule.execution_timezone if schedule else None,
                priority=priority_of(job.tags),
                last_run=last_run(instance, name),
            )
        )
    return listed


def last_run(instance: dg.DagsterInstance, job_name: str) -> LastRun | None:
    record = latest_run(instance, job_name)
    if record is None:
        return None
    return LastRun(
        run_id=record.dagster_run.run_id,
        status=record.dagster_run.status.value,
        dry_run=record.dagster_run.tags.get(DRY_RUN_TAG) == "true",
        started_at=record.start_time,
        ended_at=record.end_time,
    )


async def api_error(request: Request, error: Exception) -> JSONResponse:
    if not isinstance(error, ApiError):  # registered for ApiError only
        return await internal_error(request, error)
    return JSONResponse({"error": error.message}, status_code=error.status)


async def bad_request(request: Request, error: Exception) -> JSONResponse:
    """A body that is not JSON, not an object, or holds an unknown or mistyped option."""
    if not isinstance(error, RequestValidationError):  # registered for it only
        return await internal_error(request, error)
    sent_as = request.headers.get("content-type", "").split(";")[0].strip()
    if sent_as and sent_as != "application/json":
        # curl's `-d` alone sends a form: the body never reaches the options as JSON.
        message = f"The body must be JSON, sent with Content-Type: application/json (not {sent_as})"
        return JSONResponse({"error": message}, status_code=400)
    problems = []
    for problem in error.errors():
        if problem.get("type") == "json_invalid":
            return JSONResponse({"error": "The body must be a JSON object"}, status_code=400)
        where = ".".join(str(part) for part in problem.get("loc", ()) if part != "body")
        problems.append(f"{where}: {problem.get('msg')}" if where else str(problem.get("msg")))
    return JSONResponse({"error": "Bad options: " + "; ".join(problems)}, status_code=400)


async def internal_error(request: Request, error: Exception) -> JSONResponse:
    """Anything unforeseen: logged here, answered without a trace or a secret."""
    log.exception("admin API: %s %s failed", request.method, request.url.path)
    return JSONResponse({"error": redact(first_line(error, with_type=True))}, status_code=500)
