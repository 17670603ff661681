"""`tunelab train --resume` on damaged runs, through the command line in a process of its own: one line and exit
2 where nothing can be resumed, a clear account (and exit 0) where a damaged checkpoint can be passed over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import tiny_recipe

TUNELAB = Path(sys.executable).with_name("tunelab")


def tunelab(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "TUNELAB_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([str(TUNELAB), *args], env=env, capture_output=True, text=True, timeout=300)


def one_error_line(err: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_checkpoint):
    """A recipe and the finished run it made (steps 6, checkpoints 2, 4, 6); each test damages a copy."""
    from tests.conftest import reverse_rows, write_jsonl

    root = tmp_path_factory.mktemp("trained")
    data = write_jsonl(root / "reverse.jsonl", reverse_rows(60))
    recipe = tiny_recipe(root, tiny_checkpoint, data, train={"save_every": 2, "save_total_limit": 3})
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    done = tunelab(root / "home", "train", str(path), "--no-eval")
    assert done.returncode == 0, done.stderr
    return recipe, Path(recipe["output"]["dir"])


def copy_of(trained, tmp_path: Path) -> tuple[Path, Path]:
    import shutil

    recipe, run = trained
    moved = json.loads(json.dumps(recipe))
    moved["output"]["dir"] = str(tmp_path / "run")
    shutil.copytree(run, tmp_path / "run")
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(moved))
    return path, tmp_path / "run"


def test_resume_on_a_truncated_run_json_is_one_line(trained, tmp_path, home):
    recipe, run = copy_of(trained, tmp_path)
    text = (run / "run.json").read_text()
    (run / "run.json").write_text(text[: len(text) // 2])
    done = tunelab(home, "train", str(recipe), "--resume", "--no-eval")
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert f"{run}/run.json: not valid JSON" in line
    assert (run / "run.json").read_text() == text[: len(text) // 2]  # left as it was, for the user to look at


def test_resume_on_an_empty_run_json_is_one_line(trained, tmp_path, home):
    recipe, run = copy_of(trained, tmp_path)
    (run / "run.json").write_text("")
    done = tunelab(home, "train", str(recipe), "--resume", "--no-eval")
    assert done.returncode == 2 and "run.json: not valid JSON" in one_error_line(done.stderr)


def test_resume_from_corrupt_checkpoints_passes_over_them_and_says_so(trained, tmp_path, home):
    recipe, run = copy_of(trained, tmp_path)
    record = json.loads((run / "run.json").read_text())
    record["status"] = "failed"  # as if it died before saving the model
    (run / "run.json").write_text(json.dumps(record))
    (run / "checkpoints" / "checkpoint-6" / "rng_state.pth").write_bytes(b"")
    adapter = run / "checkpoints" / "checkpoint-4" / "adapter_model.safetensors"
    adapter.write_bytes(adapter.read_bytes()[:-100] + bytes(100))
    done = tunelab(home, "train", str(recipe), "--resume", "--no-eval")
    assert done.returncode == 0, done.stderr
    assert "Aborted" not in done.stderr + done.stdout and "Traceback" not in done.stderr
    printed = " ".join(done.stdout.split())
    assert "checkpoint-6: rng_state.pth is 0 bytes" in printed
    assert "checkpoint-4: adapter_model.safetensors changed since it was written" in printed
    assert "resuming from" in printed and "checkpoint-2" in printed
    assert json.loads((run / "run.json").read_text())["training"]["steps"] == 6


def test_a_run_killed_before_its_first_checkpoint_can_be_rerun(trained, tmp_path, home):
    """Without --resume, the message names both ways on: --resume (which starts from step 0) and --overwrite."""
    recipe, run = copy_of(trained, tmp_path)
    import shutil

    shutil.rmtree(run / "checkpoints")
    record = json.loads((run / "run.json").read_text())
    record["status"], record["training"] = "running", None
    (run / "run.json").write_text(json.dumps(record))
    done = tunelab(home, "train", str(recipe), "--no-eval")
    assert done.returncode == 2
    line = one_error_line(done.stderr)
    assert "--resume" in line and "--overwrite" in line
    done = tunelab(home, "train", str(recipe), "--resume", "--no-eval")
    assert done.returncode == 0, done.stderr
    assert "from step 0" in " ".join(done.stdout.split())
