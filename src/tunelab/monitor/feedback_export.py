"""`tunelab feedback export`: the feedback clients gave on one served model's answers, as training rows.

Rows by format (the shapes tunelab's data reader takes: messages, preference, feedback):
    sft  each correction or preferred answer: {"messages": the prompt + that answer}
    dpo  each correction or preferred answer: {"prompt", "chosen": that answer, "rejected": the model's answer}
    kto  each thumb: {"prompt", "completion": the model's answer, "label": up}; each correction or preferred
         answer: a true row of it
Then the data doctor's own stages, with the data settings of the run that served the model: cleaning with personal
data scrubbed (always: these are users' words, not a curated set), deduplication (exact, near, an answer judged
both ways), and contamination against that run's test split, so the next run is not trained on the rows that
will judge it.
"""

from __future__ import annotations

import dataclasses
import sqlite3
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.data.contamination import contamination_hits
from tunelab.data.dedup import Fingerprint, content_text
from tunelab.data.doctor import Rejected, Row, deduplicate
from tunelab.data.formats import Example, canonical_row
from tunelab.data.stages import clean_row
from tunelab.errors import TunelabError
from tunelab.files import read_jsonl, write_jsonl
from tunelab.monitor.feedback import JudgedAnswer, judged_answers, logged_models
from tunelab.monitor.requestlog import database_path, open_read_only

if TYPE_CHECKING:
    from tunelab.config.schema import ContaminationSection, DataSection

FORMATS = ("sft", "dpo", "kto")
STAGES = ("clean", "duplicate", "near_duplicate", "label_conflict", "contamination")  # the order they run in


@dataclass
class Export:
    rows: list[dict[str, Any]]  # what was written
    examples: list[Example]  # the same rows as examples (a retrain trains on them: deploy/retrain.py)
    feedback: int  # feedback read
    made: int  # rows the feedback gave, before the doctor
    dropped: dict[str, int]  # doctor stage -> rows it dropped
    pii: dict[str, int]  # personal data scrubbed, by kind
    test_splits: list[Path]  # the test splits checked; empty when the base model answered


def export_feedback(serve_dir: Path, model: str, fmt: str, out: Path, overwrite: bool = False) -> Export:
    """Write `model`'s feedback from the request log in `serve_dir` to `out` as `fmt` rows; refuse (TunelabError)
    before writing anything when it cannot."""
    if fmt not in FORMATS:
        raise TunelabError(f"--format {fmt}: choose one of {', '.join(FORMATS)}")
    check_output(out, overwrite)
    answers = read_answers(serve_dir, model)
    examples = training_examples(answers, fmt)
    if not examples:
        raise TunelabError(f"model '{model}': its {len(answers)} feedback give no {fmt} rows ({fmt} rows come from "
                           "corrections and preferred answers; thumbs alone give kto rows)")
    runs = serving_runs(answers)
    tests = [row for run in runs for row in test_split(run, model)]
    data = doctor_settings(runs, database_path(serve_dir))
    rejected: list[Rejected] = []
    rows, pii = clean(examples, data, rejected)
    rows = deduplicate(rows, data, rejected)
    rows = drop_contaminated(rows, tests, data.contamination, rejected)
    if not rows:
        raise TunelabError(f"model '{model}': all {len(examples)} {fmt} rows were dropped "
                           f"({dropped_text(rejected)}); nothing written")
    written = [canonical_row(row.example) for row in rows]
    write_jsonl(out, written)
    return Export(written, [row.example for row in rows], len(answers), len(examples),
                  dict(Counter(item.stage for item in rejected)), pii,
                  [test_path(run) for run in runs])


def check_output(out: Path, overwrite: bool) -> None:
    if out.is_dir():
        raise TunelabError(f"--out {out}: is a folder; give a file name")
    if out.exists() and not overwrite:
        raise TunelabError(f"--out {out}: exists; use --overwrite to replace it")


def read_answers(serve_dir: Path, model: str) -> list[JudgedAnswer]:
    path = database_path(serve_dir)
    if not path.is_file():
        raise TunelabError(f"{serve_dir}: no request log here ({path.name}); is it the folder `tunelab serve "
                           "--serve-dir` used?")
    try:
        connection = open_read_only(path)
        try:
            models, answers = logged_models(connection), judged_answers(connection, model)
        finally:
            connection.close()
    except sqlite3.Error as error:
        raise TunelabError(f"{path}: cannot read the request log ({error})") from None
    if model not in models:
        raise TunelabError(f"--model {model}: no completions of it in {path} (models there: "
                           f"{', '.join(models) or 'none'})")
    if not answers:
        raise TunelabError(f"--model {model}: no feedback on its answers in {path} (POST /v1/feedback, on a "
                           "server started with --log-content)")
    return answers


def training_examples(answers: list[JudgedAnswer], fmt: str) -> list[Example]:
    """Each feedback's rows in `fmt`, numbered within it (a rejected row is named `fb-...:N`)."""
    examples = []
    for answer in answers:
        made = rows_of(answer, fmt)
        examples += [dataclasses.replace(example, source=answer.feedback.id, line=number)
                     for number, example in enumerate(made, start=1)]
    return examples


def rows_of(answer: JudgedAnswer, fmt: str) -> list[Example]:
    feedback, messages, original = answer.feedback, answer.messages, answer.original
    better = [text for text in (feedback.correction, feedback.preferred) if text is not None]
    if fmt == "sft":
        return [Example("", 0, messages=messages + [{"role": "assistant", "content": text}]) for text in better]
    if fmt == "dpo":
        return [Example("", 0, messages=messages, chosen=text, rejected=original) for text in better]
    judged = [] if feedback.rating is None else [(original, feedback.rating == "up")]
    return [Example("", 0, messages=messages, completion=text, desirable=desirable)
            for text, desirable in judged + [(text, True) for text in better]]


def serving_runs(answers: list[JudgedAnswer]) -> list[Path]:
    """The run folders whose adapters gave the judged answers (a model id can be served from several runs over
    time), in the order first seen; the base model has none."""
    runs = dict.fromkeys(Path(answer.completion.adapter) for answer in answers if answer.completion.adapter)
    return list(runs)


def doctor_settings(runs: list[Path], source: Path) -> "DataSection":
    """The data settings of the (first) serving run, or the defaults for the base model, with scrubbing on."""
    from tunelab.config.load import validate_recipe
    from tunelab.config.schema import DataSection, PiiSection
    from tunelab.run.record import open_run

    if runs:
        _, record = open_run(runs[0])
        data = validate_recipe(record.recipe, source=str(runs[0] / "run.json")).data
    else:
        data = DataSection(train=str(source))  # the rows' source is the request log
    return data.model_copy(update={"pii": PiiSection(scrub=True, kinds=data.pii.kinds)})


def test_path(run: Path) -> Path:
    """The serving run's test split as its run folder keeps it (run/folder.py)."""
    from tunelab.run.folder import RunDir

    return RunDir(run).data / "test.jsonl"


def test_split(run: Path, model: str) -> list[Example]:
    from tunelab.run.record import open_run

    path = test_path(run)
    try:
        open_run(run)
        return [Example.from_json(row) for row in read_jsonl(path)]
    except (TunelabError, OSError, ValueError, TypeError) as error:
        raise TunelabError(f"{run}: the run that served '{model}' has no readable test split ({error}); the "
                           "feedback cannot be checked against it for contamination") from None


def clean(examples: list[Example], data: "DataSection", rejected: list[Rejected]) -> tuple[list[Row], dict[str, int]]:
    """The doctor's cleaning stage (stages.clean_row), row by row: a few hundred rows need no worker processes."""
    rows, pii = [], Counter()
    for example in examples:
        result = clean_row(example.to_json(), clean=data.clean, pii=data.pii, dedup=data.dedup)
        pii.update(result["pii"])
        if result["reason"]:
            rejected.append(Rejected(example.source, example.line, "train", "clean", result["reason"],
                                     row=example.to_json()))
            continue
        fp = result.get("fingerprint")
        rows.append(Row(Example.from_json(result["example"]), "train", Fingerprint(**fp) if fp else None))
    return rows, dict(pii)


def drop_contaminated(rows: list[Row], test_rows: list[Example], options: "ContaminationSection",
                      rejected: list[Rejected]) -> list[Row]:
    """Rows whose n-grams (the doctor's measure, with the run's n and threshold) are mostly in a test row.

    Checked whatever the run's `contamination.enabled` / `action` said about its own splits: these rows would
    become training data, and the test split is what judges the next run. Both sides are compared as the
    conversation they teach (the prompt and the answer a row rewards), so an SFT test row and a DPO feedback row
    with the same prompt and answer are recognised as the same."""
    if not rows or not test_rows:
        return rows
    hits = contamination_hits([taught_text(row.example) for row in rows],
                              [taught_text(example) for example in test_rows], options.ngram, options.threshold,
                              options.common_share)
    for hit in hits:
        example, twin = rows[hit.index].example, test_rows[hit.train_index]
        rejected.append(Rejected(example.source, example.line, "train", "contamination",
                                 f"{hit.overlap:.0%} of its {options.ngram}-grams appear in the test split (most in "
                                 f"{twin.where})", row=example.to_json()))
    gone = {hit.index for hit in hits}
    return [row for number, row in enumerate(rows) if number not in gone]


def taught_text(example: Example) -> str:
    """A row as a conversation: a preference row with its chosen answer, a feedback row with its completion."""
    answer = {"preference": example.chosen, "feedback": example.completion}.get(example.kind)
    if answer is None:
        return content_text(example)
    return content_text(Example(example.source, example.line,
                                messages=example.messages + [{"role": "assistant", "content": answer}]))


def dropped_text(rejected: list[Rejected]) -> str:
    counts = Counter(item.stage for item in rejected)
    return ", ".join(f"{counts[stage]} {stage.replace('_', ' ')}" for stage in STAGES if counts[stage]) or "none"
