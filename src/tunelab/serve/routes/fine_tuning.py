"""OpenAI's fine-tuning API: /v1/fine_tuning/jobs (create, list, retrieve, cancel, pause, resume, events,
checkpoints). Thin: the work is in tunelab.jobs (queue.py for these, worker.py for running them). The routes are
plain functions, so FastAPI runs them on its thread pool; each opens its own connection to the jobs database."""

from __future__ import annotations

from contextlib import closing
from typing import Any, Callable, Literal

from fastapi import APIRouter, Query, Request
from pydantic import ValidationError

from tunelab.jobs import queue
from tunelab.jobs.db import connect
from tunelab.jobs.objects import checkpoint_object, event_object, job_object, page_object
from tunelab.jobs.request import CreateJob, FeedbackFile
from tunelab.serve.errors import APIError
from tunelab.serve.routes.common import service_of

router = APIRouter()
PREFIX = "/v1/fine_tuning/jobs"


def with_jobs(request: Request, work: Callable[..., Any]) -> Any:
    service = service_of(request)
    if service.jobs is None:
        raise APIError(404, "fine-tuning is off on this server", code="fine_tuning_off")
    with closing(connect(service.jobs.serve_dir)) as connection:
        return work(connection, service.jobs)


def listed(page: tuple[list[Any], bool], to_object: Callable[[Any], dict[str, Any]]) -> dict[str, Any]:
    """A page of rows (and whether more follow) as OpenAI's list of objects."""
    rows, more = page
    return page_object([to_object(row) for row in rows], more)


@router.post(PREFIX)
def create_job(body: CreateJob, request: Request) -> dict[str, Any]:
    return with_jobs(request, lambda connection, config: job_object(queue.create_job(connection, body, config)))


@router.get(PREFIX)
def list_jobs(request: Request, after: str | None = None, limit: int = Query(20, ge=1, le=100)) -> dict[str, Any]:
    return with_jobs(request, lambda connection, config: listed(queue.list_jobs(connection, after, limit), job_object))


@router.get(PREFIX + "/{job_id}")
def retrieve_job(job_id: str, request: Request) -> dict[str, Any]:
    return with_jobs(request, lambda connection, config: job_object(queue.get_job(connection, job_id)))


ACTIONS = {"cancel": queue.cancel_job, "pause": queue.pause_job, "resume": queue.resume_job}


@router.post(PREFIX + "/{job_id}/{action}")
def change_job(job_id: str, action: Literal["cancel", "pause", "resume"], request: Request) -> dict[str, Any]:
    """POST .../cancel, .../pause, .../resume."""
    return with_jobs(request, lambda connection, config: job_object(ACTIONS[action](connection, job_id)))


@router.get(PREFIX + "/{job_id}/events")
def list_events(job_id: str, request: Request, after: str | None = None,
                limit: int = Query(20, ge=1, le=1000)) -> dict[str, Any]:
    return with_jobs(request, lambda connection, config: listed(queue.list_events(connection, job_id, after, limit),
                                                                event_object))


@router.get(PREFIX + "/{job_id}/checkpoints")
def list_checkpoints(job_id: str, request: Request, after: str | None = None,
                     limit: int = Query(10, ge=1, le=100)) -> dict[str, Any]:
    return with_jobs(request, lambda connection, config: listed(
        queue.list_checkpoints(connection, job_id, after, limit), checkpoint_object))


@router.post("/v1/fine_tuning/feedback_files")
def feedback_file(body: FeedbackFile, request: Request) -> dict[str, Any]:
    """tunelab's: the feedback on a served model's answers as a fine-tune file, and with `job` a job on it."""
    from tunelab.jobs.feedback import feedback_upload
    from tunelab.serve.routes.files import file_object

    def made(connection, config):
        row = feedback_upload(config.serve_dir, body.model, body.format, service_of(request).settings.max_file_bytes)
        answer: dict[str, Any] = {"file": file_object(row).model_dump()}
        if body.job is not None:
            try:
                job = CreateJob.model_validate({**body.job, "training_file": row.id})
            except ValidationError as error:
                problem = error.errors()[0]
                where = ".".join(str(part) for part in problem["loc"])
                raise APIError(400, f"job.{where}: {problem['msg']}", param=f"job.{where}") from None
            answer["job"] = job_object(queue.create_job(connection, job, config))
        return answer

    return with_jobs(request, made)
