"""Evaluation end to end on a tiny model: gate exit codes, eval/examples.jsonl, forgetting, report.html (rendered in
headless Chromium where installed), `tunelab runs`, and one clear line with exit code 2 for bad input."""

import contextlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import reverse_rows, tiny_recipe, write_jsonl
from tunelab.cli import main

FLIPS = {"fixed", "broken", "both_right", "both_wrong"}


def cli(*args):
    """Run `tunelab ARGS`; returns (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main([str(arg) for arg in args])
            code = 0
        except SystemExit as exit:
            code = exit.code or 0
    return code, out.getvalue(), err.getvalue()


def error_line(err):
    lines = [line for line in err.strip().splitlines() if line.strip() and not line.startswith("Writing model")]
    assert len(lines) == 1, err
    return lines[0]


def write_recipe(folder, recipe):
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_checkpoint):
    """One tiny run trained and evaluated by `tunelab train`, with an objective it cannot meet."""
    folder = tmp_path_factory.mktemp("evaluation")
    data = write_jsonl(folder / "reverse.jsonl", reverse_rows(60))
    recipe = tiny_recipe(folder, tiny_checkpoint, data, eval={"bootstrap": 200})
    recipe["objective"] = {"metric": "exact_match", "min": 1.0, "max_forgetting": 10.0}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_HOME", str(folder / "home"))
        code, out, err = cli("train", write_recipe(folder, recipe))
    return {"root": folder / "run", "code": code, "out": out, "err": err, "folder": folder}


def test_train_ends_with_the_gate_verdict_and_the_report(trained):
    root = trained["root"]
    assert trained["code"] == 3, trained["err"]
    assert error_line(trained["err"]) == "error: objective not met: exact_match 0.0% < min 100.0%"
    assert "objective NOT met" in trained["out"] and "forgetting general_text" in trained["out"]
    report = json.loads((root / "eval.json").read_text())
    assert report["objective"]["met"] is False and [c["ok"] for c in report["objective"]["checks"]] == [False, True]
    for name in report["metrics"]:
        low, high = report["intervals"]["delta"][name]
        assert low <= high
    probe = report["forgetting"]["probes"]["general_text"]
    assert probe["rows"] == 340 and probe["measure"] == "perplexity"
    assert probe["change"] == pytest.approx(probe["tuned"] / probe["base"] - 1)
    examples = [json.loads(line) for line in (root / "eval" / "examples.jsonl").read_text().splitlines()]
    assert len(examples) == report["rows"] == 6
    assert {row["flip"] for row in examples} <= FLIPS
    assert sum(report["flips"][name] for name in FLIPS) == 6
    record = json.loads((root / "run.json").read_text())
    assert record["evaluation"]["objective"]["met"] is False
    assert list((root / "tensorboard").glob("events.out.tfevents.*")), "no TensorBoard event file"
    html = (root / "report.html").read_text()
    assert html.count("<svg") >= 5 and "Objective NOT met" in html and "http://" not in html.split("<svg")[0]


def test_eval_checks_the_objective_with_exit_codes(trained):
    root = trained["folder"] / "evaluated-again"  # a copy: the other tests read the run as training left it
    shutil.copytree(trained["root"], root)
    code, out, err = cli("eval", root, "objective.metric=loss", "objective.max=1000", "objective.min=null",
                         "eval.forgetting.prompts=builtin", "eval.forgetting.max_new_tokens=4")
    assert code == 0, err
    assert "objective met: loss" in out
    report = json.loads((root / "eval.json").read_text())
    assert set(report["forgetting"]["probes"]) == {"general_text", "prompts"}
    answers = (root / "eval" / "forgetting_answers.jsonl").read_text().splitlines()
    assert len(answers) == 30
    code, _, err = cli("eval", root, "--max-rows", "3", "objective.min_gain_over_base=0.5", "eval.bootstrap=0",
                       "objective.max_forgetting=null", "eval.forgetting.enabled=false")
    assert code == 3 and "gain over base" in error_line(err)
    code, _, err = cli("eval", root, "train.lr=1")
    assert code == 2 and "tunelab eval can change eval.* and objective.* only" in error_line(err)


def test_runs_list_compare_and_report(trained):
    root = trained["root"]
    copy = trained["folder"] / "copy"
    shutil.copytree(root, copy)
    code, out, _ = cli("runs", "list", trained["folder"])
    assert code == 0 and "runs in" in out and "met" in out
    code, out, _ = cli("runs", "list", trained["folder"], "--json")
    listed = {Path(run["path"]).name: run for run in map(json.loads, out.splitlines())}
    assert code == 0 and {"copy", "run"} <= set(listed)
    assert all(listed[name]["primary"] == "exact_match" and listed[name]["verdict"] is False
               for name in ("copy", "run"))
    code, out, err = cli("runs", "compare", root, copy)
    assert code == 0, err
    assert "same recipe" in out and "B - A" in out and "different test rows" not in out
    # B answers every test row right: B - A is +100 points, and so is its interval from the saved answers
    better = trained["folder"] / "better"
    shutil.copytree(root, better)
    examples = [json.loads(line) for line in (better / "eval" / "examples.jsonl").read_text().splitlines()]
    (better / "eval" / "examples.jsonl").write_text("".join(
        json.dumps({**row, "tuned": row["reference"]}) + "\n" for row in examples))
    saved = json.loads((better / "eval.json").read_text())
    saved["tuned"]["exact_match"] = 1.0
    (better / "eval.json").write_text(json.dumps(saved))
    from tunelab.run.listing import compare_runs

    rows = {row["metric"]: row for row in compare_runs(root, better)["metrics"]}
    assert rows["exact_match"]["difference"] == 1.0 and rows["exact_match"]["interval"] == [1.0, 1.0]
    assert rows["loss"]["difference"] == 0.0 and rows["loss"]["interval"] == [0.0, 0.0]
    code, out, _ = cli("runs", "compare", root, better)
    assert "+100.0 pts [+100.0, +100.0 pts]" in out
    (copy / "report.html").unlink()
    code, out, _ = cli("report", copy)
    assert code == 0 and (copy / "report.html").is_file()


def broken_copy(trained, name, change):
    copy = trained["folder"] / name
    shutil.copytree(trained["root"], copy)
    change(copy)
    return copy


def set_schema(version):
    def change(folder):
        record = json.loads((folder / "run.json").read_text())
        record["schema_version"] = version
        (folder / "run.json").write_text(json.dumps(record))

    return change


@pytest.mark.parametrize("name, change, message", [
    ("no-model", lambda folder: shutil.rmtree(folder / "model"), "the run has no saved model"),
    ("newer", set_schema(99), "run format 99 (written by tunelab 0.1.0), this tunelab 0.1.0 reads format 2; "
                              "it comes from a newer tunelab"),
    ("older", set_schema(0), "it comes from an older tunelab"),
])
def test_eval_of_a_run_it_cannot_read_is_one_line_and_exit_2(trained, name, change, message):
    code, _, err = cli("eval", broken_copy(trained, name, change))
    assert code == 2 and message in error_line(err)


def test_bad_evaluation_input_is_refused_before_training(tmp_path, home, tiny_checkpoint):
    labels = write_jsonl(tmp_path / "labels.jsonl", [{"text": f"message {i}", "label": "spam" if i % 3 else "ham"}
                                                     for i in range(30)])
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, labels, eval={"metrics": ["bleu"]})
    code, _, err = cli("train", write_recipe(tmp_path, recipe))  # label rows, and the recipe's task is sft
    assert code == 2 and "24 'label' row(s), and task 'sft' trains on chat and text rows; use task: " \
        "classification" in error_line(err)
    recipe["task"] = {"name": "classification", "prompt": "{text}?"}
    code, _, err = cli("train", write_recipe(tmp_path, recipe))
    assert code == 2 and "'bleu' does not fit label rows (classification); use accuracy" in error_line(err)

    train = write_jsonl(tmp_path / "train.jsonl", reverse_rows(30))
    no_answers = write_jsonl(tmp_path / "test.jsonl", [{"prompt": "abc", "completion": ""}])
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, train)
    recipe["data"]["test"] = str(no_answers)
    code, _, err = cli("train", write_recipe(tmp_path, recipe))  # a test split with no reference answer
    assert code == 2 and f"{no_answers}: all 1 test row(s) also appear in train or were rejected (1: no assistant " \
        "answer left (empty turns))" in error_line(err)

    recipe = tiny_recipe(tmp_path, tiny_checkpoint, train, train={"report_to": ["wandb"]})
    code, _, err = cli("train", write_recipe(tmp_path, recipe))
    if code == 2:  # wandb is not a test dependency; where it is installed this recipe is fine
        assert "train.report_to: 'wandb' is not installed" in error_line(err)
    assert not (tmp_path / "run").exists() or code == 0


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def headless(browser, profile, *args):
    return subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                           "--no-first-run", "--disable-component-update", "--disable-sync",
                           f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(chromium() is None, reason="Chromium is not installed (.ci/run installs it: apt-get install "
                                               "chromium)")
def test_report_renders_in_headless_chromium(trained, tmp_path):
    """The page opens offline, its plots are in the rendered DOM, and the loss curve is drawn on screen."""
    import numpy as np
    from PIL import Image

    url = (trained["root"] / "report.html").resolve().as_uri()
    dom = headless(chromium(), tmp_path / "profile-dom", "--dump-dom", url).stdout
    assert dom.count("<svg") >= 5 and "Objective NOT met" in dom and "Forgetting" in dom
    shot = tmp_path / "report.png"
    headless(chromium(), tmp_path / "profile-shot", "--window-size=1280,5000", f"--screenshot={shot}", url)
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    training_blue = np.abs(pixels - [0x1F, 0x77, 0xB4]).sum(axis=1) < 30  # the loss curve's colour
    assert training_blue.sum() > 200, "the loss curve is not visible in the screenshot"


def test_shipped_general_text_is_a_few_hundred_distinct_sentences():
    from tunelab.evaluate.forgetting import GENERAL_PROMPTS, GENERAL_TEXT, shipped_lines

    sentences = shipped_lines(GENERAL_TEXT)
    assert len(sentences) == len(set(sentences)) == 340
    assert len(shipped_lines(GENERAL_PROMPTS)) == 30
    assert Path(__file__).parents[2].joinpath("src/tunelab/evaluate", GENERAL_TEXT).is_file()


def test_row_losses_batched_by_length_come_back_in_row_order(tiny_checkpoint):
    from tunelab.data.templates import encode_text
    from tunelab.evaluate.loss import row_losses
    from tunelab.models.load import load_causal_lm
    from tunelab.models.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(tiny_checkpoint)
    model = load_causal_lm(tiny_checkpoint).eval()
    texts = ["a much longer sentence than the others", "short", "medium length", "x"]
    rows = [encode_text(tokenizer, text, {tokenizer.eos_token_id}) for text in texts]
    together = row_losses(model, rows, tokenizer.pad_token_id, batch_size=3)
    alone = [row_losses(model, [row], tokenizer.pad_token_id)[0] for row in rows]
    assert [count for _, count in together] == [len(row.input_ids) - 1 for row in rows]
    assert [total for total, _ in together] == pytest.approx([total for total, _ in alone], rel=1e-4)
