"""The work behind POST /v1/feedback: check the judged completion in the request log, store the feedback there.

The request log writes late (after the answer's last byte, on its own thread), so a client that sends feedback
as soon as it has its answer may arrive before the completion's row: the service announced the id when it made it
(RequestLog.expect), and the lookup waits for that row (wait_written) before it calls an id unknown. A feedback
answers once its own row is committed, so an export started after the 200 finds it.
"""

from __future__ import annotations

import time
import uuid

from tunelab.monitor.feedback import LoggedCompletion, find_completion
from tunelab.monitor.requestlog import RequestLog, open_read_only
from tunelab.serve import protocol as api
from tunelab.serve.errors import APIError
from tunelab.serve.registry import shown

# Seconds a feedback waits for the request log to write the completion it names (a stream still generating holds
# its row back until it ends) or its own row.
WRITE_WAIT = 10.0


def give_feedback(request_log: RequestLog, body: api.FeedbackRequest) -> api.Feedback:
    """Store `body` against its completion; APIError (400, 404, 409, 503) when it cannot be."""
    check_judgement(body)
    completion = logged_completion(request_log, body.completion_id)
    check_completion(completion, body.index)
    feedback = api.Feedback(id=f"fb-{uuid.uuid4().hex}", created_at=int(time.time()),
                            completion_id=body.completion_id, model=completion.model, index=body.index,
                            rating=body.rating, correction=body.correction, preferred=body.preferred,
                            comment=body.comment)
    request_log.expect(feedback.id)
    request_log.add_feedback({"id": feedback.id, "ts": time.time(), "completion_id": feedback.completion_id,
                              "choice": feedback.index, "model": feedback.model, "rating": feedback.rating,
                              "correction": feedback.correction, "preferred": feedback.preferred,
                              "comment": feedback.comment})
    if not request_log.wait_written(feedback.id, WRITE_WAIT):
        raise APIError(503, "The request log did not store the feedback in time; send it again")
    return feedback


def check_judgement(body: api.FeedbackRequest) -> None:
    if body.rating is None and body.correction is None and body.preferred is None:
        raise APIError(400, "Give at least one of rating ('up' or 'down'), correction or preferred")
    for name in ("correction", "preferred"):
        value = getattr(body, name)
        if value is not None and not value.strip():
            raise APIError(400, f"{name}: an empty answer teaches nothing; leave it out instead", param=name)


def logged_completion(request_log: RequestLog, completion_id: str) -> LoggedCompletion:
    if not request_log.wait_written(completion_id, WRITE_WAIT):
        raise APIError(409, f"The completion {shown(completion_id)} is still being generated; send its feedback "
                            "once it has finished", param="completion_id")
    connection = open_read_only(request_log.path)
    try:
        completion = find_completion(connection, completion_id)
    finally:
        connection.close()
    if completion is None:
        raise APIError(404, f"No completion with id {shown(completion_id)} in this server's request log",
                       param="completion_id", code="completion_not_found")
    return completion


def check_completion(completion: LoggedCompletion, index: int) -> None:
    if not completion.succeeded:
        raise APIError(400, f"The completion {completion.request_id} failed (status {completion.status}): there is "
                            "no answer to judge", param="completion_id")
    if not completion.has_content:
        raise APIError(400, f"The completion {completion.request_id} of model '{completion.model}' was logged "
                            "without its prompt and answer: content logging is off for that model; start the server "
                            "with --log-content to give feedback on its answers", param="completion_id")
    choices = len(completion.outputs())
    if index >= choices:
        raise APIError(400, f"index: the completion {completion.request_id} has {choices} choice(s) (0 to "
                            f"{choices - 1})", param="index")
