"""Sharp edges a new user hits on the command line: each is one `error: ...` line naming what and where, exit code 2,
no traceback, and the user's files as they were (issue 10, items 6 and 8)."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import tiny_recipe
from tests.unit.test_cli import invoke, one_error_line, write_recipe


def snapshot(*paths):
    return {path: path.read_bytes() for path in paths}


# ---- item 6: tracebacks where one line is promised ---------------------------------------------------------------

@pytest.fixture
def no_tokenizer_model(tmp_path, tiny_checkpoint):
    """The tiny checkpoint's weights and config, without any tokenizer file."""
    folder = tmp_path / "no-tokenizer"
    folder.mkdir()
    for name in ("config.json", "generation_config.json", "model.safetensors"):
        shutil.copy(tiny_checkpoint / name, folder / name)
    return folder


@pytest.mark.parametrize("command", [("train",), ("data", "check")])
def test_a_model_folder_without_a_tokenizer(capsys, tmp_path, home, no_tokenizer_model, reverse_data, command,
                                            monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path, tiny_recipe(tmp_path, no_tokenizer_model, reverse_data))
    code, _, err = invoke(capsys, *command, str(recipe))
    assert code == 2
    line = one_error_line(err)
    assert f"{no_tokenizer_model}: no tokenizer in the model folder" in line and "tokenizer.json" in line
    assert not (tmp_path / "run").exists()


def test_a_tokenizer_file_that_cannot_be_read(capsys, tmp_path, home, tiny_checkpoint, reverse_data):
    model = tmp_path / "broken-tokenizer"
    shutil.copytree(tiny_checkpoint, model)
    (model / "tokenizer.json").write_text('{"version": "1.0", "truncation": nu')
    code, _, err = invoke(capsys, "train", str(write_recipe(tmp_path, tiny_recipe(tmp_path, model, reverse_data))))
    assert code == 2 and f"{model}: the tokenizer cannot be loaded" in one_error_line(err)


def template_recipe(tmp_path, checkpoint, data, template_text):
    template = tmp_path / "template.jinja"
    template.write_text(template_text)
    return write_recipe(tmp_path, tiny_recipe(tmp_path, checkpoint, data, model={"chat_template": str(template)})), \
        template


@pytest.mark.parametrize("command", [("train",), ("data", "check")])
def test_a_chat_template_with_a_syntax_error(capsys, tmp_path, home, tiny_checkpoint, reverse_data, command,
                                             monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = "{% for m in messages %}\n{{ m.content }\n{% endfor %}"
    recipe, template = template_recipe(tmp_path, tiny_checkpoint, reverse_data, text)
    code, _, err = invoke(capsys, *command, str(recipe))
    assert code == 2
    line = one_error_line(err)
    assert f"model.chat_template: {template}:2: not a valid Jinja template" in line
    assert template.read_text() == text


def test_a_model_whose_own_chat_template_does_not_parse(capsys, tmp_path, home, tiny_checkpoint, reverse_data):
    model = tmp_path / "bad-template-model"
    shutil.copytree(tiny_checkpoint, model)
    (model / "chat_template.jinja").write_text("{% if %}")
    code, _, err = invoke(capsys, "train", str(write_recipe(tmp_path, tiny_recipe(tmp_path, model, reverse_data))))
    assert code == 2 and f"{model / 'chat_template.jinja'}:1: not a valid Jinja template" in one_error_line(err)


@pytest.mark.parametrize("command", [("train",), ("data", "check")])
def test_a_chat_template_that_raises(capsys, tmp_path, home, tiny_checkpoint, reverse_data, command, monkeypatch):
    monkeypatch.chdir(tmp_path)
    recipe, _ = template_recipe(tmp_path, tiny_checkpoint, reverse_data,
                                "{{ raise_exception('this template takes no user turns') }}")
    code, _, err = invoke(capsys, *command, str(recipe))
    assert code == 2
    line = one_error_line(err)
    assert "the chat template failed on this conversation: this template takes no user turns" in line
    assert not (tmp_path / "run").exists()


def test_a_recipe_that_is_not_utf8(capsys, tmp_path, home, tiny_checkpoint, reverse_data):
    recipe = write_recipe(tmp_path, tiny_recipe(tmp_path, tiny_checkpoint, reverse_data))
    content = recipe.read_bytes() + b"# r\xe9glages\n"  # a Latin-1 comment on the last line
    recipe.write_bytes(content)
    code, _, err = invoke(capsys, "train", str(recipe))
    assert code == 2
    line_number = content.count(b"\n")
    offset = content.index(b"\xe9")
    assert f"{recipe}:{line_number}: not UTF-8 (byte 0xe9 at byte offset {offset})" in one_error_line(err)
    assert recipe.read_bytes() == content


def test_duplicate_recipe_keys_are_refused_with_both_lines(capsys, tmp_path, home, tiny_checkpoint, reverse_data):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"model:\n  name: {tiny_checkpoint}\ndata:\n  train: {reverse_data}\ntrain:\n  lr: 0.001\n"
                      "  max_steps: 2\n  lr: 0.1\n")
    code, _, err = invoke(capsys, "train", str(recipe))
    assert code == 2
    assert f"{recipe}:8: duplicate key 'lr' on lines 6 and 8" in one_error_line(err)
    assert not (tmp_path / "runs").exists()


def test_duplicate_sections_are_refused_too():
    from tunelab.config.load import parse_yaml
    from tunelab.errors import TunelabError

    with pytest.raises(TunelabError, match="^r.yaml:3: duplicate key 'train' on lines 1 and 3"):
        parse_yaml("train:\n  lr: 1\ntrain:\n  max_steps: 2\n", "r.yaml")
    # equal keys in different mappings, and YAML merge keys, are not duplicates
    raw, _ = parse_yaml("a: &x {lr: 1}\nb:\n  <<: *x\n  lr: 2\nc: {lr: 3}\n", "r.yaml")
    assert raw == {"a": {"lr": 1}, "b": {"lr": 2}, "c": {"lr": 3}}


# ---- item 8: help, version, --debug, overrides -------------------------------------------------------------------

def command_paths(command, prefix=()):
    """Every command and group of the CLI, as the words that name it."""
    yield prefix
    for name, child in getattr(command, "commands", {}).items():
        yield from command_paths(child, (*prefix, name))


def test_help_shows_flags_as_flags_and_no_python_types(capsys, monkeypatch):
    import typer

    from tunelab.cli import app

    monkeypatch.setenv("COLUMNS", "200")
    paths = list(command_paths(typer.main.get_command(app)))
    assert ("train",) in paths and ("data", "check") in paths and len(paths) > 15
    for path in paths:
        code, out, err = invoke(capsys, *path, "--help")
        assert code == 0, err
        assert "--help" in out
        for leak in ("<bool>", "list[", "<list"):
            assert leak not in out, f"tunelab {' '.join(path)} --help shows {leak}:\n{out}"
    _, out, _ = invoke(capsys, "train", "--help")
    assert "--resume" in out and "--no-resume" in out and "KEY=VALUE" in out


def test_version(capsys):
    import tunelab

    code, out, _ = invoke(capsys, "--version")
    assert code == 0 and out.strip() == f"tunelab {tunelab.__version__}"


@pytest.mark.parametrize("where", ["first", "last", "middle"])
def test_debug_anywhere_on_the_line_shows_the_traceback(capsys, tmp_path, where):
    from tunelab.errors import TunelabError

    recipe = tmp_path / "recipe.yaml"
    recipe.write_text("train:\n  lr: 1\n  lr: 2\n")
    args = {"first": ["--debug", "train", str(recipe)], "last": ["train", str(recipe), "--debug"],
            "middle": ["train", "--debug", str(recipe), "train.max_steps=2"]}[where]
    with pytest.raises(TunelabError, match="duplicate key 'lr'"):
        invoke(capsys, *args)
    code, _, err = invoke(capsys, *[arg for arg in args if arg != "--debug"])
    assert code == 2 and "duplicate key 'lr'" in one_error_line(err)


@pytest.mark.parametrize("override, message", [
    ("trian.lr=1", "command line: unknown key 'trian'; did you mean 'train'?"),
    ("train.lerning_rate=1", "command line: unknown key 'train.lerning_rate'; did you mean 'train.lr'?"),
    ("method.name=loraa", "command line: method.name: unknown method 'loraa'"),
    ("data.split.tset=0.1", "command line: unknown key 'data.split.tset'; did you mean 'data.split.test'?"),
])
def test_an_override_typo_is_blamed_on_the_command_line(capsys, tmp_path, home, tiny_checkpoint, reverse_data,
                                                        override, message):
    recipe = write_recipe(tmp_path, tiny_recipe(tmp_path, tiny_checkpoint, reverse_data))
    code, _, err = invoke(capsys, "train", str(recipe), override)
    assert code == 2
    assert one_error_line(err).removeprefix("error: ").startswith(message)


# ---- item 8: runs list and monitor at 80 columns -----------------------------------------------------------------

def rendered(renderable, width=80) -> list[str]:
    from rich.console import Console

    console = Console(width=width, record=True, file=open("/dev/null", "w"))
    console.print(renderable)
    return console.export_text().splitlines()


def whole_on_a_line(value: str, lines: list[str]) -> bool:
    return any(value in line for line in lines)


def test_runs_list_is_readable_at_80_columns(tmp_path):
    from tunelab.present.console import runs_table
    from tunelab.run.listing import RunSummary

    runs = [
        RunSummary(tmp_path / "smollm2-sms-spam-lora-r16", "completed", None, "classification",
                   "/models/smollm2-135m-instruct", "lora", 1200, "accuracy", 0.62, 0.965, forgetting=0.031,
                   verdict=True),
        RunSummary(tmp_path / "quickstart-reverse-dora", "completed", None, "sft", "smollm2-135m-instruct", "dora",
                   120, "exact_match", 0.1, 0.45, forgetting=-0.002, verdict=False),
        RunSummary(tmp_path / "killed-run", "interrupted", None, "sft", "tiny", "full", 40),
    ]
    lines = rendered(runs_table(tmp_path, runs, 80))
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if "status" in line)
    for key in ("run", "status", "metric", "tuned", "change", "objective"):
        assert key in header
    for value in ("smollm2-sms-spam-lora-r16", "quickstart-reverse-dora", "killed-run", "completed", "interrupted",
                  "exact_match", "accuracy", "not evaluated", "96.5%", "45.0%", "+34.5 pts", "+35.0 pts", "not met"):
        assert whole_on_a_line(value, lines), f"{value!r} is not whole on one line:\n" + "\n".join(lines)
    assert "not shown at this width" in "\n".join(lines)
    wide = rendered(runs_table(tmp_path, runs, 200), 200)
    assert "forgetting" in wide[2] and "classification" in "\n".join(wide) and "not shown" not in "\n".join(wide)


def test_monitor_is_readable_at_80_columns(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from tunelab.monitor.requestlog import RequestLog

    log = RequestLog(tmp_path)
    now = time.time()
    for model, latency in (("smollm2-135m-instruct:sms-spam-lora", 123.0), ("base", 48.0)):
        for _ in range(3):
            log.append({"ts": now - 60, "endpoint": "/v1/chat/completions", "model": model, "status": 200,
                        "latency_ms": latency, "prompt_tokens": 1200, "completion_tokens": 340})
    log.close()
    done = subprocess.run([sys.executable, "-m", "tunelab", "monitor", str(tmp_path)], capture_output=True,
                          text=True, env={**os.environ, "COLUMNS": "80"}, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    header = next(line for line in lines if "p50 ms" in line)
    for key in ("model", "requests", "error rate", "p50 ms", "p95 ms"):
        assert key in header
    for value in ("smollm2-135m-instruct:sms-spam-lora", "123", "0.0%"):
        assert whole_on_a_line(value, lines), done.stdout


# ---- item 8: models pull takes what models list shows ------------------------------------------------------------

@pytest.mark.parametrize("name", ["minilm-l6-v2", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"])
def test_models_pull_takes_the_names_models_list_shows(capsys, home, name):
    from tunelab.models.builtin import find_package_file
    from tunelab.models.catalog import BUILTIN_MODELS

    if find_package_file(BUILTIN_MODELS["minilm-l6-v2"]) is None:
        pytest.skip("the package carrying minilm-l6-v2 is not installed (no network here to install it)")
    code, listed, _ = invoke(capsys, "models", "list")
    assert code == 0 and "minilm-l6-v2" in listed
    code, out, err = invoke(capsys, "models", "pull", name)
    assert code == 0, err
    assert out.startswith("ready minilm-l6-v2: ") and "BERT encoder; for classification" in " ".join(out.split())


def test_models_pull_of_an_unknown_name(capsys, home):
    code, _, err = invoke(capsys, "models", "pull", "gpt-17")
    line = one_error_line(err)
    assert code == 2 and "unknown built-in model 'gpt-17' (available: smollm2-135m-instruct, minilm-l6-v2)" in line


# ---- item 8: progress of data preparation, validation, eval and export ---------------------------------------------

class Recorder:
    """A `progress(stage, done, total)` that keeps every call."""

    def __init__(self):
        self.calls: list[tuple[str, int, int]] = []

    def __call__(self, stage, done, total):
        self.calls.append((stage, done, total))

    def of(self, stage):
        return [(done, total) for name, done, total in self.calls if name == stage]


def test_data_preparation_reports_progress_over_the_rows(tmp_path, tiny_checkpoint):
    from tests.conftest import reverse_rows, write_jsonl
    from tunelab.config.schema import Recipe
    from tunelab.data.cache import prepare_data
    from tunelab.files import read_jsonl
    from tunelab.models.load import model_limits
    from tunelab.models.tokenizer import load_tokenizer

    data = write_jsonl(tmp_path / "d.jsonl", reverse_rows(2600))
    recipe = Recipe.model_validate({"model": {"name": str(tiny_checkpoint)},
                                    "data": {"train": str(data), "num_proc": 1, "max_length": 64}})
    tokenizer = load_tokenizer(tiny_checkpoint)
    limits = model_limits(tiny_checkpoint, tokenizer)
    recorder = Recorder()
    shown = prepare_data(recipe.data, tokenizer, limits.stop_ids, limits.context, tmp_path / "a", progress=recorder)
    silent = prepare_data(recipe.data, tokenizer, limits.stop_ids, limits.context, tmp_path / "b")
    cleaning, tokenizing = recorder.of("cleaning rows"), recorder.of("tokenizing rows")
    assert cleaning[0] == (0, 2600) and cleaning[-1] == (2600, 2600) and len(cleaning) >= 4
    kept = sum(1 for _ in read_jsonl(shown.folder / "train.jsonl")) + sum(
        1 for name in ("validation", "test") for _ in read_jsonl(shown.folder / f"{name}.jsonl"))
    assert tokenizing[-1] == (kept, kept) and len(tokenizing) >= 4
    assert [done for done, _ in tokenizing] == sorted(done for done, _ in tokenizing)
    for name in ("train.jsonl", "tokens/train.jsonl", "rejected.jsonl"):  # the same result, shown or not
        assert (shown.folder / name).read_text() == (silent.folder / name).read_text()


def test_a_validation_pass_has_its_own_bar():
    import io

    from rich.console import Console
    from transformers import TrainerControl, TrainerState

    from tunelab.present.progress import RichProgress

    progress = RichProgress(Console(file=io.StringIO(), force_terminal=True, width=100))
    state, control = TrainerState(max_steps=10), TrainerControl()
    progress.on_train_begin(None, state, control)
    batches = list(range(7))
    for _ in batches[:3]:
        progress.on_prediction_step(None, state, control, eval_dataloader=batches)
    bar = next(task for task in progress.progress.tasks if task.description == "validation")
    assert (bar.completed, bar.total) == (3, 7)
    progress.on_evaluate(None, state, control, metrics={"eval_loss": 1.0})
    assert [task.description for task in progress.progress.tasks] == ["train"]
    progress.on_train_end(None, state, control)


def test_stage_bars_draw_on_a_terminal_and_stay_quiet_elsewhere():
    import io

    from rich.console import Console

    from tunelab.present.progress import StageProgress

    for terminal, quiet, drawn in ((True, False, True), (False, False, False), (True, True, False)):
        out = io.StringIO()
        with StageProgress(Console(file=out, force_terminal=terminal, quiet=quiet, width=100)) as progress:
            progress("tokenizing rows", 40, 100)
        assert ("tokenizing rows" in out.getvalue()) is drawn, (terminal, quiet)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, tiny_checkpoint):
    from tests.unit.test_export import train_tiny_run

    return train_tiny_run(tmp_path_factory.mktemp("progress"), tiny_checkpoint)


def test_eval_reports_each_step(small_run):
    from tunelab.evaluate.evaluator import evaluate_run
    from tunelab.run.models import open_run_models

    models = open_run_models(small_run, small_run.parent / "home", "cpu")
    recorder = Recorder()
    evaluate_run(models, models.recipe, lambda _: None, progress=recorder)
    stages = list(dict.fromkeys(name for name, _, _ in recorder.calls))
    assert stages == ["eval: base model: 6 rows", "eval: tuned model: 6 rows", "eval: scoring"]
    assert all(recorder.of(stage) == [(0, 1), (1, 1)] for stage in stages)


def test_export_reports_each_step(small_run, tmp_path):
    from tunelab.export.exporter import ExportOptions, export_run

    recorder, lines = Recorder(), []
    export_run(small_run, ExportOptions(format="merged", out=tmp_path / "merged"), small_run.parent / "home",
               say=lines.append, progress=recorder)
    stages = list(dict.fromkeys(name for name, _, _ in recorder.calls))
    assert stages[0] == "export: writing the merged model (f32)"
    assert stages[-1] == "export: the model card and export.json"
    assert len(stages) == len(lines) + 1 and all(recorder.of(stage)[-1] == (1, 1) for stage in stages)
