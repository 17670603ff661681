"""/v1/files driven by the official openai client against a live server on a tiny model: uploads checked by the
data doctor (format and rows kept), listing and paging, content round trips, deletion, refusals that store
nothing, and uploaded filenames that are never paths."""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import openai
import pytest

from tests.unit.test_serve import LiveServer
from tunelab.jobs import db, files
from tunelab.serve.middleware import UPLOAD_FRAMING
from tunelab.serve.settings import ServeSettings

KEY = "sk-files"
FILE_LIMIT = 64 * 1024
BODY_LIMIT = 16 * 1024  # other routes' limit, under the upload's: uploads must not be held to it

CHAT = [{"messages": [{"role": "system", "content": "Reverse the word."}, {"role": "user", "content": word},
                      {"role": "assistant", "content": word[::-1], "weight": 1}]}
        for word in ("abc", "hello", "tunelab")]
PREFERENCE = [{"input": {"messages": [{"role": "user", "content": f"Say {word}."}], "tools": [],
                         "parallel_tool_calls": True},
               "preferred_output": [{"role": "assistant", "content": word}],
               "non_preferred_output": [{"role": "assistant", "content": word.upper() + "!"}]}
              for word in ("yes", "no")]
REINFORCEMENT = [{"messages": [{"role": "user", "content": "2 + 2?"}], "reference_answer": "4"}]


def jsonl(rows: list[dict]) -> bytes:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows).encode("utf-8")


@pytest.fixture(scope="module")
def server(tiny_checkpoint, tmp_path_factory):
    from tunelab.serve.server import build_service

    serve_dir = tmp_path_factory.mktemp("files") / "serve"
    settings = ServeSettings(serve_dir=serve_dir, fine_tune_keys=frozenset({KEY}), max_body_bytes=BODY_LIMIT,
                             max_file_bytes=FILE_LIMIT)
    service = build_service([], str(tiny_checkpoint), settings, serve_dir.parent / "home", say=lambda _: None)
    live = LiveServer(service)
    yield live
    live.stop()


@pytest.fixture
def client(server) -> openai.OpenAI:
    return server.client(KEY)


def stored(server) -> tuple[list[str], int]:
    """The files folder's names and the database's row count: what a refused upload must leave unchanged."""
    serve_dir = server.service.settings.serve_dir
    folder = serve_dir / "files"
    names = sorted(path.name for path in folder.iterdir()) if folder.exists() else []
    connection = db.connect(serve_dir)
    try:
        count = connection.execute("SELECT COUNT(*) FROM files").fetchone()[0]
    finally:
        connection.close()
    return names, count


def test_uploads_keep_the_detected_format_and_row_count(server, client):
    serve_dir = server.service.settings.serve_dir
    content = jsonl(CHAT)
    assert len(content) < FILE_LIMIT and len(jsonl(CHAT * 40)) > BODY_LIMIT
    uploaded = {name: client.files.create(file=(f"{name}.jsonl", jsonl(rows)), purpose="fine-tune")
                for name, rows in (("chat", CHAT * 40), ("dpo", PREFERENCE), ("rft", REINFORCEMENT))}
    chat = uploaded["chat"]
    assert (chat.object, chat.purpose, chat.filename, chat.status) == ("file", "fine-tune", "chat.jsonl",
                                                                        "processed")
    assert chat.id.startswith("file-") and chat.bytes == len(jsonl(CHAT * 40)) and chat.expires_at is None
    read = {name: files.get_file(serve_dir, obj.id) for name, obj in uploaded.items()}
    assert {name: (row.format, row.rows) for name, row in read.items()} == {
        "chat": ("messages", 120), "dpo": ("openai_preference", 2), "rft": ("prompt", 1)}
    assert files.file_path(serve_dir, chat.id) == serve_dir / "files" / f"{chat.id}.jsonl"
    assert files.data_options(serve_dir, uploaded["rft"].id) == {
        "train": str(serve_dir / "files" / f"{uploaded['rft'].id}.jsonl"), "format": "prompt",
        "fields": {"prompt": "messages"}}


def test_list_pages_with_limit_and_after(client):
    ids = [client.files.create(file=(f"e{n}.jsonl", jsonl([{"n": n}])), purpose="evals").id for n in range(3)]
    first = client.files.list(purpose="evals", limit=2)
    assert [f.id for f in first.data] == ids[::-1][:2] and first.has_more
    assert [f.id for f in client.files.list(purpose="evals", limit=2, after=ids[1]).data] == [ids[0]]
    assert [f.id for f in client.files.list(purpose="evals", limit=2)] == ids[::-1]  # the client follows `after`
    assert [f.id for f in client.files.list(purpose="evals", order="asc")] == ids
    page = client.files.list(purpose="evals", limit=10).model_dump()
    assert (page["object"], page["first_id"], page["last_id"], page["has_more"]) == ("list", ids[2], ids[0], False)
    with pytest.raises(openai.BadRequestError, match="no file 'file-nope'"):
        client.files.list(after="file-nope")
    with pytest.raises(openai.BadRequestError, match="limit"):
        client.files.list(limit=10_001)


def test_retrieve_content_round_trip_and_delete(server, client):
    serve_dir = server.service.settings.serve_dir
    content = b'{"text": "caf\xc3\xa9 \\u00e9"}\r\n\r\n' + bytes(range(256))  # any bytes, kept exactly
    made = client.files.create(file=("notes.bin", content), purpose="user_data")
    assert client.files.retrieve(made.id) == made
    assert client.files.content(made.id).content == content
    assert made.id in [f.id for f in client.files.list(purpose="user_data")]
    path = files.file_path(serve_dir, made.id)
    deleted = client.files.delete(made.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (made.id, "file", True)
    assert not path.exists()
    for call in (client.files.retrieve, client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError) as gone:
            call(made.id)
        assert gone.value.body["code"] == "file_not_found" and made.id in gone.value.body["message"]
    assert made.id not in [f.id for f in client.files.list(purpose="user_data")]


def test_a_bad_line_is_named_and_nothing_is_stored(server, client):
    before = stored(server)
    lines = jsonl(CHAT[:2]) + b'{"messages": [{"role": "user", "content": "no answer"}]}\n' + jsonl(CHAT[:1])
    with pytest.raises(openai.BadRequestError) as bad:
        client.files.create(file=("bad.jsonl", lines), purpose="fine-tune")
    assert bad.value.body == {"message": bad.value.body["message"], "type": "invalid_request_error",
                              "param": "file", "code": "invalid_file_format"}
    assert bad.value.body["message"] == "line 3: no assistant message to learn from"
    broken = jsonl(CHAT[:2]) + b'{"messages": [\n'
    with pytest.raises(openai.BadRequestError, match=r"line 3: not valid JSON"):
        client.files.create(file=("broken.jsonl", broken), purpose="fine-tune")
    with pytest.raises(openai.BadRequestError, match=r"line 1: cannot tell the format from the fields \(colour\)"):
        client.files.create(file=("odd.jsonl", b'{"colour": "red"}\n'), purpose="fine-tune")
    assert stored(server) == before


def test_purposes_and_file_types_are_checked(server, client):
    before = stored(server)
    with pytest.raises(openai.BadRequestError) as wrong:
        client.files.create(file=("a.jsonl", jsonl(CHAT)), purpose="training")  # type: ignore[arg-type]
    assert "purpose 'training' is not one of fine-tune, batch, assistants, user_data, evals, vision" in str(wrong.value)
    assert wrong.value.body["param"] == "purpose"
    with pytest.raises(openai.BadRequestError, match=r"a fine-tune file must be JSONL \(.jsonl\), got 'a.csv'"):
        client.files.create(file=("a.csv", b"prompt,completion\na,b\n"), purpose="fine-tune")
    assert stored(server) == before
    batch = client.files.create(file=("requests.csv", b"not checked"), purpose="batch")
    assert files.get_file(server.service.settings.serve_dir, batch.id).format is None


def test_uploads_over_the_limit_are_413_and_store_nothing(server, client):
    before = stored(server)
    # Over the file limit but within the body's (the file plus multipart framing): refused while copied.
    with pytest.raises(openai.APIStatusError) as copied:
        client.files.create(file=("big.jsonl", b"x" * (FILE_LIMIT + 1)), purpose="user_data")
    assert copied.value.status_code == 413
    assert copied.value.body["message"] == f"the file is over this server's upload limit of {FILE_LIMIT} bytes"
    # Declared too big: refused before the body is read.
    with pytest.raises(openai.APIStatusError) as declared:
        client.files.create(file=("huge.jsonl", b"x" * (FILE_LIMIT * 4)), purpose="user_data")
    body_limit = f"The request body is over this server's limit of {FILE_LIMIT + UPLOAD_FRAMING} bytes"
    assert declared.value.status_code == 413 and declared.value.body["message"] == body_limit
    # No Content-Length (chunked): refused as the body arrives.
    status, body = chunked_upload(server.port, b"x" * (FILE_LIMIT * 4))
    assert status == 413 and body["error"]["message"] == body_limit  # the middleware's count, not the copy's
    assert body["error"]["type"] == "invalid_request_error"
    assert stored(server) == before


def chunked_upload(port: int, content: bytes) -> tuple[int, dict]:
    boundary = "tunelab-test-boundary"
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nuser_data\r\n--{boundary}\r\n"
            f"Content-Disposition: form-data; name=\"file\"; filename=\"c.jsonl\"\r\n\r\n").encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    pieces = [head] + [content[i:i + 8192] for i in range(0, len(content), 8192)] + [tail]
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("POST", "/v1/files", body=iter(pieces), encode_chunked=True,
                       headers={"Authorization": f"Bearer {KEY}",
                                "Content-Type": f"multipart/form-data; boundary={boundary}"})
    response = connection.getresponse()
    status, body = response.status, json.loads(response.read())
    connection.close()
    return status, body


def test_an_uploaded_filename_is_never_a_path(server, client, tmp_path_factory):
    serve_dir = server.service.settings.serve_dir
    made = client.files.create(file=("../../etc/x.jsonl", jsonl(CHAT)), purpose="fine-tune")
    assert made.filename == "../../etc/x.jsonl"
    path = files.file_path(serve_dir, made.id)
    assert path == serve_dir / "files" / f"{made.id}.jsonl" and path.read_bytes() == jsonl(CHAT)
    root = Path(tmp_path_factory.getbasetemp())
    assert not list(root.rglob("x.jsonl")) and not Path("/etc/x.jsonl").exists()
    assert not (Path.cwd() / "../../etc/x.jsonl").exists() and not (serve_dir / "../../etc/x.jsonl").exists()


def test_keys_and_other_routes_keep_their_limits(server, client):
    with pytest.raises(openai.AuthenticationError):
        server.client("wrong").files.list()
    status, _, body = server.raw("POST", "/v1/chat/completions", body=b'{"model": "x", "pad": "' +
                                 b"y" * BODY_LIMIT + b'"}', key=KEY)
    assert status == 413 and str(BODY_LIMIT) in body["error"]["message"]
    # a chunked body (no Content-Length) is counted as it arrives, and refused with the same line
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    connection.request("POST", "/v1/chat/completions", body=iter([b"y" * 8192] * (BODY_LIMIT // 8192 + 2)),
                       encode_chunked=True, headers={"Authorization": f"Bearer {KEY}",
                                                     "Content-Type": "application/json"})
    response = connection.getresponse()
    status, body = response.status, json.loads(response.read())
    connection.close()
    assert status == 413 and body["error"]["message"] == \
        f"The request body is over this server's limit of {BODY_LIMIT} bytes"
