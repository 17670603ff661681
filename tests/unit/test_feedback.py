"""Feedback on served answers (POST /v1/feedback) and `tunelab feedback export`: a tiny trained run served with
--log-content, answers from the official `openai` client, feedback over HTTP, then the exported SFT, DPO and KTO
rows checked row by row, with what the data doctor's stages drop (duplicates, a thumb both ways, personal data,
the run's own test rows)."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import openai
import pytest

from tests.unit.test_cli import invoke
from tests.unit.test_serve import KEY, LiveServer, train_run
from tunelab.files import read_jsonl
from tunelab.serve.settings import ServeSettings

MAX_TOKENS = 8
# Prompts far from each other and from the run's data (reversed letter strings), so only the rows meant to be
# duplicates or contaminated are.
PROMPTS = {
    "a": "Name a colour of the sky on a clear summer afternoon.",
    "b": "Which instrument has eighty eight keys and hammers?",
    "c": "Suggest a title for a story about a lighthouse keeper.",
    "d": "Who should I write to about the broken invoice?",
}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_checkpoint) -> Path:
    return train_run(tmp_path_factory.mktemp("feedback-run"), tiny_checkpoint, "run-fb", seed=1)


def serve(run: Path, serve_dir: Path, log_content: bool) -> LiveServer:
    from tunelab.serve.server import build_service

    settings = ServeSettings(serve_dir=serve_dir, fine_tune_keys=frozenset({KEY}), max_tokens=64, batch_wait=0.002,
                             log_content=log_content)
    return LiveServer(build_service([f"rev={run}"], None, settings, run.parent / "home", say=lambda _: None))


@pytest.fixture(scope="module")
def live(run, tmp_path_factory):
    server = serve(run, tmp_path_factory.mktemp("serve-fb"), log_content=True)
    yield server
    server.stop()


def post_feedback(live: LiveServer, **body) -> tuple[int, dict]:
    """With the official client's own transport (it has no feedback method): status and JSON body."""
    try:
        return 200, live.client().post("/feedback", body=body, cast_to=dict)
    except openai.APIStatusError as error:
        return error.status_code, {"error": error.body}


def chat(live: LiveServer, prompt: str, model: str = "rev") -> tuple[str, str]:
    # sampled (seeded): the tiny run's greedy answer to a prompt unlike its data is often only newlines, which
    # cleaning would rightly drop
    answer = live.client().chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                   temperature=1.0, seed=7, max_tokens=MAX_TOKENS)
    text = answer.choices[0].message.content
    assert text.strip(), "the tiny run answered nothing: the rows below need an answer to judge"
    return answer.id, text


def user(prompt: str) -> list[dict]:
    return [{"role": "user", "content": prompt}]


@pytest.fixture(scope="module")
def judged(live, run):
    """Feedback of every kind on `rev`'s answers; what each export should hold is built from it in the tests."""
    test_row = read_jsonl(run / "data" / "test.jsonl")[0]
    test_prompt = test_row["messages"][0]["content"]
    test_answer = next(m["content"] for m in test_row["messages"] if m["role"] == "assistant")
    ids, outputs = {}, {}
    for name, prompt in {**PROMPTS, "test": test_prompt}.items():
        ids[name], outputs[name] = chat(live, prompt)
    completion = live.client().completions.create(model="rev", prompt="Once upon a time in a quiet harbour",
                                                  temperature=1.0, seed=7, max_tokens=MAX_TOKENS)
    assert completion.id.startswith("cmpl-") and completion.choices[0].text.strip()
    given = [
        dict(completion_id=ids["a"], rating="down", correction="Blue, usually a bright pale blue.",
             comment="too vague"),
        dict(completion_id=ids["a"], correction="Blue, usually a bright pale blue."),  # the same correction again
        dict(completion_id=ids["b"], rating="up"),
        dict(completion_id=ids["b"], rating="down"),  # the same answer judged both ways
        dict(completion_id=ids["c"], preferred="The Keeper of the Northern Light"),
        dict(completion_id=ids["d"], correction="Write to billing.team@example.com with the invoice number."),
        dict(completion_id=ids["test"], correction=test_answer),  # the run's own test row
        dict(completion_id=completion.id, rating="up"),
    ]
    for body in given:
        status, stored = post_feedback(live, **body)
        assert status == 200, stored
        assert stored["id"].startswith("fb-") and stored["object"] == "feedback" and stored["model"] == "rev"
        assert {key: stored[key] for key in body} == body and stored["index"] == 0
    return {"ids": ids, "outputs": outputs, "test_prompt": test_prompt, "completion": completion}


def export(capsys, live, tmp_path, fmt: str) -> tuple[list[dict], str]:
    out = tmp_path / f"{fmt}.jsonl"
    code, printed, err = invoke(capsys, "feedback", "export", str(live.service.settings.serve_dir), "--model", "rev",
                             "--format", fmt, "--out", str(out))
    assert code == 0, err
    return read_jsonl(out), " ".join(printed.split())


SCRUBBED = "Write to <EMAIL> with the invoice number."


def test_sft_rows_are_the_corrections_and_preferred_answers(capsys, live, judged, tmp_path):
    rows, printed = export(capsys, live, tmp_path, "sft")
    assert rows == [
        {"messages": user(PROMPTS["a"]) + [{"role": "assistant", "content": "Blue, usually a bright pale blue."}]},
        {"messages": user(PROMPTS["c"]) + [{"role": "assistant", "content": "The Keeper of the Northern Light"}]},
        {"messages": user(PROMPTS["d"]) + [{"role": "assistant", "content": SCRUBBED}]},
    ]
    assert "wrote 3 sft rows" in printed and "from 8 feedback" in printed and "5 made" in printed
    assert "1 duplicate, 1 contamination" in printed and "scrubbed: 1 email" in printed
    assert "run-fb/data/test.jsonl" in printed


def test_dpo_pairs_choose_the_correction_over_the_original(capsys, live, judged, tmp_path):
    rows, printed = export(capsys, live, tmp_path, "dpo")
    original = judged["outputs"]
    assert rows == [
        {"prompt": user(PROMPTS["a"]), "chosen": "Blue, usually a bright pale blue.", "rejected": original["a"]},
        {"prompt": user(PROMPTS["c"]), "chosen": "The Keeper of the Northern Light", "rejected": original["c"]},
        {"prompt": user(PROMPTS["d"]), "chosen": SCRUBBED, "rejected": original["d"]},
    ]
    assert "wrote 3 dpo rows" in printed and "1 duplicate, 1 contamination" in printed


def test_kto_rows_are_thumbs_and_corrections_as_desirable(capsys, live, judged, tmp_path):
    rows, printed = export(capsys, live, tmp_path, "kto")
    original = judged["outputs"]
    completion = judged["completion"]
    assert rows == [
        {"prompt": user(PROMPTS["a"]), "completion": original["a"], "label": False},
        {"prompt": user(PROMPTS["a"]), "completion": "Blue, usually a bright pale blue.", "label": True},
        {"prompt": user(PROMPTS["b"]), "completion": original["b"], "label": True},
        {"prompt": user(PROMPTS["c"]), "completion": "The Keeper of the Northern Light", "label": True},
        {"prompt": user(PROMPTS["d"]), "completion": SCRUBBED, "label": True},
        # a completions prompt is text the model continued: one user message, as prompt/completion rows read
        {"prompt": user("Once upon a time in a quiet harbour"), "completion": completion.choices[0].text,
         "label": True},
    ]
    assert "wrote 6 kto rows" in printed and "9 made" in printed
    assert "1 duplicate, 1 label conflict, 1 contamination" in printed


def test_the_exported_rows_read_back_as_tunelab_data(live, judged, tmp_path, capsys):
    from tunelab.data.formats import parse_items
    from tunelab.data.readers import scan_records

    for fmt, kind in (("sft", "chat"), ("dpo", "preference"), ("kto", "feedback")):
        out = tmp_path / f"{fmt}.jsonl"
        assert invoke(capsys, "feedback", "export", str(live.service.settings.serve_dir), "--model", "rev",
                   "--format", fmt, "--out", str(out))[0] == 0
        examples, bad = parse_items(scan_records(out, "auto", None, 10_000_000), "auto", {}, None)
        assert not bad and examples and {example.kind for example in examples} == {kind}


def test_feedback_sent_the_moment_an_answer_arrives_finds_it(live):
    for number in range(5):
        answer_id, _ = chat(live, f"Quick question number {number}: what rhymes with light?")
        status, stored = post_feedback(live, completion_id=answer_id, rating="up")
        assert status == 200 and stored["completion_id"] == answer_id
    stream = live.client().chat.completions.create(model="rev", messages=user("Stream me a short reply."),
                                                   temperature=0, max_tokens=MAX_TOKENS, stream=True)
    chunks = list(stream)
    status, stored = post_feedback(live, completion_id=chunks[0].id, rating="down")
    assert chunks[0].id.startswith("chatcmpl-") and status == 200 and stored["completion_id"] == chunks[0].id


def test_feedback_on_an_answer_still_queued_for_the_log_waits_for_it(live):
    """The log's writer is held back (a write lock on the database): the answer is sent but not yet written, and
    the feedback on it must wait for its row instead of calling it unknown."""
    database = sqlite3.connect(live.service.request_log.path, isolation_level=None)
    database.execute("BEGIN IMMEDIATE")  # the writer now waits (sqlite's busy timeout, 5 s) to insert
    try:
        answer_id, _ = chat(live, "Held back: what comes after nine?")
        results = []
        waiting = threading.Thread(target=lambda: results.append(post_feedback(live, completion_id=answer_id,
                                                                               rating="up")))
        waiting.start()
        time.sleep(0.5)
        assert not results
    finally:
        database.execute("COMMIT")
        database.close()
    waiting.join(timeout=20)
    assert results and results[0][0] == 200 and results[0][1]["completion_id"] == answer_id


def test_feedback_waits_for_a_completion_the_log_has_not_written_yet(tmp_path):
    """The id is announced when the answer is made and its row comes later: the feedback must wait, not 404."""
    from tunelab.monitor.requestlog import RequestLog
    from tunelab.serve.feedback import give_feedback
    from tunelab.serve.protocol import FeedbackRequest

    log = RequestLog(tmp_path)
    try:
        log.expect("chatcmpl-late")
        results = []
        waiting = threading.Thread(target=lambda: results.append(
            give_feedback(log, FeedbackRequest(completion_id="chatcmpl-late", rating="up"))))
        waiting.start()
        time.sleep(0.3)
        assert not results  # still waiting for the row
        log.append({"ts": time.time(), "request_id": "chatcmpl-late", "endpoint": "/v1/chat/completions",
                    "model": "m", "status": 200, "latency_ms": 1.0, "prompt": json.dumps(user("hi")),
                    "output": json.dumps(["hello"])})
        waiting.join(timeout=10)
        assert results and results[0].completion_id == "chatcmpl-late" and results[0].model == "m"
    finally:
        log.close()
    stored = sqlite3.connect(tmp_path / "requests.sqlite").execute(
        "SELECT completion_id, rating, model FROM feedback").fetchall()
    assert stored == [("chatcmpl-late", "up", "m")]


def test_a_failed_completion_cannot_be_judged(tmp_path):
    from tunelab.monitor.requestlog import RequestLog
    from tunelab.serve.errors import APIError
    from tunelab.serve.feedback import give_feedback
    from tunelab.serve.protocol import FeedbackRequest

    log = RequestLog(tmp_path)
    try:
        log.expect("chatcmpl-timeout")
        log.append({"ts": time.time(), "request_id": "chatcmpl-timeout", "endpoint": "/v1/chat/completions",
                    "model": "m", "status": 504, "latency_ms": 1.0, "error": "The request timed out",
                    "prompt": json.dumps(user("hi")), "output": json.dumps([""])})
        with pytest.raises(APIError) as refused:
            give_feedback(log, FeedbackRequest(completion_id="chatcmpl-timeout", rating="down"))
        assert refused.value.status == 400 and "failed (status 504)" in refused.value.message
    finally:
        log.close()


def test_bad_feedback_is_refused_in_openai_shape(live):
    answer_id, _ = chat(live, PROMPTS["a"])
    cases = [
        (dict(completion_id="chatcmpl-nosuch", rating="up"), 404, "No completion with id 'chatcmpl-nosuch'"),
        (dict(completion_id=answer_id, comment="just a comment"), 400, "at least one of rating"),
        (dict(completion_id=answer_id, correction="   "), 400, "correction: an empty answer"),
        (dict(completion_id=answer_id, rating="up", index=3), 400, "has 1 choice(s)"),
        (dict(completion_id=answer_id, rating="meh"), 422, "rating"),
    ]
    for body, status, message in cases:
        got, error = live.raw("POST", "/v1/feedback", json.dumps(body).encode())[::2]
        assert got == status and message in error["error"]["message"], (body, error)
        assert set(error["error"]) == {"message", "type", "param", "code"}
    assert live.raw("POST", "/v1/feedback", json.dumps({"completion_id": answer_id, "rating": "up"}).encode(),
                    key=None)[0] == 401


def test_feedback_on_an_answer_logged_without_content_says_to_log_content(run, tmp_path):
    server = serve(run, tmp_path / "serve", log_content=False)
    try:
        answer_id, _ = chat(server, PROMPTS["b"])
        status, error = post_feedback(server, completion_id=answer_id, rating="up")
    finally:
        server.stop()
    assert status == 400 and error["error"]["type"] == "invalid_request_error"
    assert "content logging is off for that model" in error["error"]["message"]
    assert "--log-content" in error["error"]["message"]


# ---- refusals of the export: one line, exit 2, nothing written -------------------------------------------------

def test_export_refusals(capsys, live, judged, tmp_path):
    serve_dir = str(live.service.settings.serve_dir)
    out = tmp_path / "rows.jsonl"
    base = live.service.registry.base.id
    live.client().chat.completions.create(model=base, messages=user("hello"), max_tokens=2)  # no feedback on it
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "requests.sqlite").write_bytes(b"not a database" * 100)
    cases = [
        ((serve_dir, "--model", "nosuch", "--format", "sft"), "--model nosuch: no completions of it"),
        ((serve_dir, "--model", base, "--format", "kto"), f"--model {base}: no feedback on its answers"),
        ((str(tmp_path / "empty"), "--model", "rev", "--format", "sft"), "no request log here"),
        ((str(garbage), "--model", "rev", "--format", "sft"), "cannot read the request log"),
        ((serve_dir, "--model", "rev", "--format", "csv"), "--format csv: choose one of sft, dpo, kto"),
    ]
    for args, message in cases:
        code, printed, err = invoke(capsys, "feedback", "export", *args, "--out", str(out))
        assert code == 2 and message in " ".join(err.split()) and len(err.strip().splitlines()) == 1, err
        assert not out.exists()
    out.write_text("keep me\n")
    code, _, err = invoke(capsys, "feedback", "export", serve_dir, "--model", "rev", "--format", "sft", "--out",
                       str(out))
    assert code == 2 and "exists; use --overwrite" in err and out.read_text() == "keep me\n"
    code, _, _ = invoke(capsys, "feedback", "export", serve_dir, "--model", "rev", "--format", "sft", "--out", str(out),
                     "--overwrite")
    assert code == 0 and len(read_jsonl(out)) == 3


def test_the_server_makes_a_fine_tune_file_and_a_job_from_feedback(live, judged, capsys, tmp_path):
    """POST /v1/fine_tuning/feedback_files: the same rows `tunelab feedback export` writes, stored as an upload, and
    with `job` a queued DPO job trained on them."""
    expected, _ = export(capsys, live, tmp_path, "dpo")
    base = live.service.registry.base.id
    made = live.client().post("/fine_tuning/feedback_files", cast_to=dict,
                              body={"model": "rev", "format": "dpo",
                                    "job": {"model": base, "method": {"type": "dpo"}, "suffix": "fb"}})
    file, job = made["file"], made["job"]
    assert file["purpose"] == "fine-tune" and file["filename"] == "feedback-rev-dpo.jsonl"
    content = live.client().files.content(file["id"]).text
    assert [json.loads(line) for line in content.splitlines()] == expected
    assert job["training_file"] == file["id"] and job["status"] == "validating_files"
    assert job["method"]["type"] == "dpo"
    with pytest.raises(openai.BadRequestError, match="nobody: no completions of it"):
        live.client().post("/fine_tuning/feedback_files", cast_to=dict, body={"model": "nobody", "format": "sft"})
    with pytest.raises(openai.BadRequestError, match=r"job.method.type"):
        live.client().post("/fine_tuning/feedback_files", cast_to=dict,
                           body={"model": "rev", "format": "dpo", "job": {"model": base, "method": {"type": "x"}}})
