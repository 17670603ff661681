"""POST /v1/feedback: thumbs, a correction or a preferred answer on a logged completion (a tunelab extension)."""

from __future__ import annotations

from fastapi import APIRouter, Request

from tunelab.serve.feedback import give_feedback
from tunelab.serve.protocol import Feedback, FeedbackRequest
from tunelab.serve.routes.common import log_of, service_of

router = APIRouter()


@router.post("/v1/feedback", response_model=Feedback)
def feedback(body: FeedbackRequest, request: Request) -> Feedback:
    # a plain def: FastAPI runs it on its thread pool, where waiting for the request log blocks no other request
    service = service_of(request)
    answer = give_feedback(service.request_log, body)
    log_of(request)["model"] = answer.model
    return answer
