"""
A FastAPI service that creates Cobalt tasks and, if asked, waits for their outcome.

    uvicorn examples.fastapi_app:app --port 8000

Configuration comes from the environment, read when the app starts:

- ``COBALT_BASE_URL``, ``COBALT_CLIENT_ID``, ``COBALT_CLIENT_SECRET``, ``COBALT_ACCESS_TOKEN``;
- ``COBALT_WEBHOOK_SECRET``: Cobalt delivers webhooks to ``POST /webhooks/cobalt``;
- ``REDIS_URL`` or ``DATABASE_URL`` (optional, one of them): the sink every worker shares,
  a ``RedisSink`` for ``redis://...``, a ``PostgresSink`` for ``postgresql://...``, a
  ``SQLiteSink`` for ``sqlite:///path`` (the workers of one host); without either an
  ``InMemorySink``, which is right for one worker only.

``POST /tasks`` answers:

- 200 ``{job_id, task_id, status: "succeeded", emr_task_id}`` when waited for and done;
- 200 ``{..., status: "failed", failure_reason}`` when Cobalt reported the job as failed:
  the request itself went through, the EHR refused the task;
- 202 ``{..., status: "pending"}`` when not waited for, or when the wait ran out (the job
  goes on: do not resubmit);
- 400, 404, 422 with Cobalt's (or the SDK's) message for a refused request;
- 502 when Cobalt failed or refused for a reason the caller cannot fix, 503 when it is
  unreachable or rate limiting. ``outcome_unknown: true`` means the task may exist anyway.
"""

from __future__ import annotations

import os
from typing import Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from cobalt_async import (
    APIError,
    BadRequestError,
    CobaltConnectionError,
    CobaltError,
    JobFailedError,
    JobTimeoutError,
    NotFoundError,
    RateLimitError,
    RequestValidationError,
)
from cobalt_async.fastapi import CobaltDep, cobalt_lifespan, webhook_router

# Without either URL the sink is an InMemorySink (the secret in COBALT_WEBHOOK_SECRET feeds it).
lifespan = cobalt_lifespan(
    redis_url=os.environ.get("REDIS_URL"), database_url=os.environ.get("DATABASE_URL")
)
app = FastAPI(title="Cobalt tasks", lifespan=lifespan)
app.include_router(webhook_router("/webhooks/cobalt"))


class TaskIn(BaseModel):
    """A task to create in the EHR."""

    model_config = ConfigDict(extra="forbid")

    patient_mrn: str
    description: str
    subject: str | None = None
    wait: bool = False
    timeout_s: float = Field(default=60.0, gt=0, le=300)


class TaskOut(BaseModel):
    """Where the task stands."""

    job_id: str
    task_id: str | None
    status: Literal["pending", "succeeded", "failed"]
    emr_task_id: str | None = None
    failure_reason: str | None = None


@app.post("/tasks", response_model=TaskOut, responses={202: {"model": TaskOut}})
async def create_task(task: TaskIn, client: CobaltDep) -> JSONResponse:
    """Submit a task; with ``wait`` also wait up to ``timeout_s`` for its outcome."""
    handle = await client.tasks.create(
        patient_mrn=task.patient_mrn, description=task.description, subject=task.subject
    )
    out = TaskOut(job_id=handle.job_id, task_id=handle.task_id, status="pending")
    if task.wait:
        try:
            event = await handle.wait(timeout=task.timeout_s)
        except JobTimeoutError:
            pass  # still pending: the job goes on, and the caller can ask again later
        except JobFailedError as exc:
            out.status, out.failure_reason = "failed", exc.failure_reason
        else:
            out.status, out.emr_task_id = "succeeded", event.data.emr_task_id
    code = 202 if out.status == "pending" else 200
    return JSONResponse(out.model_dump(exclude_none=True), status_code=code)


@app.get("/healthz")
async def healthz() -> dict[str, str]:
    """Liveness: the app started, so its Cobalt client is open."""
    return {"status": "ok"}


@app.exception_handler(CobaltError)
async def cobalt_error(request: Request, exc: Exception) -> JSONResponse:
    """Map the SDK's errors to answers for this service's callers."""
    status = _status(exc)
    detail = exc.message if isinstance(exc, APIError) else str(exc)
    body: dict[str, object] = {"detail": detail}
    if isinstance(exc, APIError):
        body["outcome_unknown"] = exc.outcome_unknown
    return JSONResponse(body, status_code=status)


def _status(exc: Exception) -> int:
    if isinstance(exc, RequestValidationError):
        return 422  # refused by the SDK before anything was sent, like FastAPI's own 422
    if isinstance(exc, BadRequestError):
        return 400
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, CobaltConnectionError | RateLimitError):
        return 503
    return 502  # Cobalt failed, or refused for a reason the caller cannot fix
