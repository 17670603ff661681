"""Crash-safe checkpoints: each checkpoint is committed by a manifest, --resume takes the newest complete one and
ends with the weights an uninterrupted run gives, bit for bit; a finished run is not trained further; totals and
the log cover the whole run; a full disk fails one run cleanly and --resume continues it. Kills are real (SIGKILL
of a training process, tests/reliability/child.py), at fixed points through the fault-injection hook and at random
moments of a checkpoint write."""

from __future__ import annotations

import io
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback

from tests.conftest import run_record, tiny_recipe
from tunelab.errors import TunelabError
from tunelab.train.checkpoints import MANIFEST, commit, newest_verified, verify

REPO = Path(__file__).resolve().parents[2]
COMBINATIONS = [("lora", "fp32"), ("lora", "bf16"), ("full", "fp32"), ("full", "bf16")]
METHODS = {"lora": {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.0}, "full": {"name": "full"}}


def recipe_for(tmp_path: Path, name: str, checkpoint: Path, data: Path, method: str = "lora",
               precision: str = "fp32", **train) -> dict:
    settings = {"max_steps": 6, "save_every": 2, "eval_every": 3, "precision": precision, "save_total_limit": 3,
                **train}
    return tiny_recipe(tmp_path / name, checkpoint, data, method=METHODS[method], train=settings)


def train(recipe: dict, home: Path, resume: bool = False, callbacks: tuple = ()) -> tuple[Path, str]:
    """Train in this process; (run folder, what it printed)."""
    from rich.console import Console

    from tunelab.config.load import validate_recipe
    from tunelab.train.lifecycle import run_recipe

    printed = io.StringIO()
    console = Console(file=printed, width=300, color_system=None)
    outcome = run_recipe(validate_recipe(recipe), home, console, resume=resume, evaluate=False, callbacks=callbacks)
    return outcome.run.root, printed.getvalue()


def in_child(recipe: dict, home: Path, *options: str) -> subprocess.Popen:
    path = Path(recipe["output"]["dir"]).with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(recipe))
    env = {**os.environ, "TUNELAB_HOME": str(home)}
    return subprocess.Popen([sys.executable, "-m", "tests.reliability.child", str(path), *options], cwd=REPO,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def killed(process: subprocess.Popen) -> None:
    _, err = process.communicate(timeout=300)
    assert process.returncode == -signal.SIGKILL, err[-2000:]


def weights(run_root: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in sorted((run_root / "model").glob("*.safetensors")):
        tensors.update(load_file(str(path)))
    assert tensors
    return tensors


def assert_identical(first: dict, second: dict) -> None:
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def logged_steps(run_root: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_root / "train_log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_checkpoint):
    """The reference runs, one per method and precision, trained without a break."""
    root = tmp_path_factory.mktemp("whole")
    from tests.conftest import reverse_rows, write_jsonl

    data = write_jsonl(root / "reverse.jsonl", reverse_rows(60))
    runs = {}

    def get(method: str, precision: str):
        if (method, precision) not in runs:
            run_root, _ = train(recipe_for(root, f"{method}-{precision}", tiny_checkpoint, data, method, precision),
                                root / "home")
            runs[method, precision] = run_root
        return runs[method, precision]

    get.data = data
    return get


# ---- the manifest --------------------------------------------------------------------------------------------


def committed_folder(tmp_path: Path, name: str = "checkpoint-2") -> Path:
    folder = tmp_path / "checkpoints" / name
    folder.mkdir(parents=True)
    (folder / "trainer_state.json").write_text('{"global_step": 2}')
    (folder / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 64)
    (folder / "rng_state.pth").write_bytes(b"rng" * 100)
    commit(folder)
    return folder


def test_a_committed_checkpoint_verifies(tmp_path):
    folder = committed_folder(tmp_path)
    assert verify(folder) is None
    manifest = json.loads((folder / MANIFEST).read_text())
    assert manifest["files"]["adapter_model.safetensors"]["size"] == 256 * 64


@pytest.mark.parametrize("damage, reason", [
    (lambda f: (f / MANIFEST).unlink(), "no manifest: the save never finished"),
    (lambda f: (f / "adapter_model.safetensors").write_bytes(bytes(range(256)) * 32),
     "adapter_model.safetensors is 8192 bytes, 16384 were written"),
    (lambda f: (f / "adapter_model.safetensors").write_bytes(bytes(1000) + (bytes(range(256)) * 64)[1000:]),
     "adapter_model.safetensors changed since it was written (sha256 differs)"),
    (lambda f: (f / "rng_state.pth").write_bytes(b""), "rng_state.pth is 0 bytes, 300 were written"),
    (lambda f: (f / "trainer_state.json").unlink(), "trainer_state.json is missing"),
    (lambda f: (f / MANIFEST).write_text('{"files": '), "tunelab-manifest.json is damaged"),
])
def test_a_damaged_checkpoint_says_why(tmp_path, damage, reason):
    folder = committed_folder(tmp_path)
    damage(folder)
    assert verify(folder) == reason


def test_the_newest_complete_checkpoint_is_chosen_and_newer_ones_listed(tmp_path):
    older = committed_folder(tmp_path, "checkpoint-2")
    broken = committed_folder(tmp_path, "checkpoint-10")
    (broken / "rng_state.pth").write_bytes(b"")
    unfinished = tmp_path / "checkpoints" / "checkpoint-12"
    unfinished.mkdir()
    choice = newest_verified(tmp_path / "checkpoints")
    assert choice.checkpoint == older
    assert [(path.name, why.split(":")[0]) for path, why in choice.skipped] == [
        ("checkpoint-12", "no manifest"), ("checkpoint-10", "rng_state.pth is 0 bytes, 300 were written")]


# ---- kills -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method, precision", COMBINATIONS)
def test_a_kill_inside_a_checkpoint_save_resumes_to_identical_weights(uninterrupted, tiny_checkpoint, tmp_path,
                                                                        home, method, precision):
    whole = uninterrupted(method, precision)
    recipe = recipe_for(tmp_path, "run", tiny_checkpoint, uninterrupted.data, method, precision)
    damaged = "adapter_model.safetensors" if method == "lora" else "model.safetensors"
    killed(in_child(recipe, home, "--kill", "save:4", "--damage", damaged))
    assert not (tmp_path / "run" / "run" / "checkpoints" / "checkpoint-4" / MANIFEST).exists()
    assert run_record_at(recipe).status == "running"

    run_root, printed = train(recipe, home, resume=True)
    assert "skipped" in printed and "checkpoint-4: no manifest: the save never finished" in printed
    assert "resuming from" in printed and "checkpoint-2" in printed
    assert_identical(weights(whole), weights(run_root))
    record, reference = run_record_at(recipe), read_run(whole)
    assert record.status == "completed" and record.training.steps == 6
    assert record.training.tokens_seen == reference.training.tokens_seen  # totals over the whole run
    assert logged_steps(run_root) == logged_steps(whole)  # each step logged once
    assert sorted(p.name for p in (run_root / "checkpoints").iterdir()) == ["checkpoint-2", "checkpoint-4",
                                                                             "checkpoint-6"]


def run_record_at(recipe: dict):
    from tunelab.run.folder import RunDir

    return run_record(RunDir(Path(recipe["output"]["dir"])))


def read_run(run_root: Path):
    from tunelab.run.folder import RunDir

    return run_record(RunDir(run_root))


@pytest.mark.parametrize("seed", [1, 2])
def test_kills_at_random_moments_of_a_checkpoint_write_resume_to_identical_weights(
        uninterrupted, tiny_checkpoint, tmp_path, home, seed):
    """SIGKILL within 0-30 ms of a checkpoint folder appearing (or, when the save is quicker, of the next step)."""
    whole = uninterrupted("lora", "fp32")
    chance = random.Random(seed)
    recipe = recipe_for(tmp_path, "run", tiny_checkpoint, uninterrupted.data)
    target = Path(recipe["output"]["dir"]) / "checkpoints" / f"checkpoint-{chance.choice([2, 4, 6])}"
    process = in_child(recipe, home)
    while process.poll() is None and not target.exists():
        time.sleep(0.0005)
    time.sleep(chance.uniform(0, 0.03))
    process.kill()
    process.communicate(timeout=300)
    run_root, printed = train(recipe, home, resume=True)
    assert_identical(weights(whole), weights(run_root))
    assert run_record_at(recipe).training.steps == 6
    assert logged_steps(run_root) == logged_steps(whole)


def test_a_kill_before_the_first_checkpoint_resumes_from_step_0(uninterrupted, tiny_checkpoint, tmp_path, home):
    whole = uninterrupted("lora", "fp32")
    recipe = recipe_for(tmp_path, "run", tiny_checkpoint, uninterrupted.data)
    killed(in_child(recipe, home, "--kill", "step:1"))
    run_root, printed = train(recipe, home, resume=True)
    assert "no complete checkpoint" in printed and "from step 0" in printed
    assert_identical(weights(whole), weights(run_root))
    assert logged_steps(run_root) == logged_steps(whole)


def test_a_run_killed_after_its_last_checkpoint_finishes_exactly_the_planned_steps(
        uninterrupted, tiny_checkpoint, tmp_path, home):
    whole = uninterrupted("lora", "fp32")
    recipe = recipe_for(tmp_path, "run", tiny_checkpoint, uninterrupted.data)
    killed(in_child(recipe, home, "--kill", "end:0"))
    assert not (Path(recipe["output"]["dir"]) / "model").exists()
    run_root, _ = train(recipe, home, resume=True)
    record = run_record_at(recipe)
    assert record.status == "completed" and record.training.steps == 6 and max(logged_steps(run_root)) == 6
    assert_identical(weights(whole), weights(run_root))
    assert (run_root / "merged" / "model.safetensors").is_file()
    assert record.training.train_runtime_seconds > 0 and record.training.train_loss is not None


def test_a_finished_run_resumes_to_already_complete(uninterrupted, tiny_checkpoint, tmp_path, home):
    recipe = recipe_for(tmp_path, "run", tiny_checkpoint, uninterrupted.data, scheduler="constant")
    run_root, _ = train(recipe, home)
    files = {path: path.read_bytes() for path in sorted(run_root.rglob("*")) if path.is_file()}
    for _ in range(2):
        _, printed = train(recipe, home, resume=True)
        assert "already complete" in printed and "6/6 steps" in printed
    assert {path: path.read_bytes() for path in sorted(run_root.rglob("*")) if path.is_file()} == files


@pytest.mark.parametrize("name, damage, why", [
    ("adapter_model.safetensors", lambda f: f.write_bytes(f.read_bytes()[:1000] + bytes(200) + f.read_bytes()[1200:]),
     "sha256 differs"),
    ("rng_state.pth", lambda f: f.write_bytes(b""), "0 bytes"),
])
def test_a_corrupt_checkpoint_is_passed_over(uninterrupted, tiny_checkpoint, tmp_path, home, name, damage, why):
    """Bytes damaged after the save (zeroed inside the adapter, an emptied RNG state): found by the manifest,
    never loaded (an emptied rng_state.pth used to end the process with a bare 'Aborted.')."""
    whole = uninterrupted("lora", "fp32")
    recipe = recipe_for(tmp_path, "run", tiny_checkpoint, uninterrupted.data)
    killed(in_child(recipe, home, "--kill", "step:5"))
    damage(Path(recipe["output"]["dir"]) / "checkpoints" / "checkpoint-4" / name)
    run_root, printed = train(recipe, home, resume=True)
    assert f"checkpoint-4: {name}" in printed and why in printed
    assert_identical(weights(whole), weights(run_root))


# ---- metrics ---------------------------------------------------------------------------------------------------


class SlowValidation(TrainerCallback):
    def on_evaluate(self, args, state, control, **kwargs):
        time.sleep(0.6)


def test_validation_time_is_not_training_time(uninterrupted, tiny_checkpoint, tmp_path, home):
    recipe = recipe_for(tmp_path, "run", tiny_checkpoint, uninterrupted.data)
    started = time.perf_counter()
    train(recipe, home, callbacks=(SlowValidation(),))
    elapsed = time.perf_counter() - started
    training = run_record_at(recipe).training
    assert training.train_runtime_seconds < elapsed - 1.2  # two validations of 0.6 s each are not counted
    assert training.train_tokens_per_second == pytest.approx(training.tokens_seen / training.train_runtime_seconds)


def test_training_time_adds_up_over_a_resume(uninterrupted, tiny_checkpoint, tmp_path, home):
    recipe = recipe_for(tmp_path, "run", tiny_checkpoint, uninterrupted.data)
    killed(in_child(recipe, home, "--kill", "step:5"))
    state = json.loads((Path(recipe["output"]["dir"]) / "checkpoints" / "checkpoint-4" / "trainer_state.json")
                       .read_text())
    before = state["stateful_callbacks"]["TrainingClock"]["args"]["seconds"]
    assert before > 0
    train(recipe, home, resume=True)
    assert run_record_at(recipe).training.train_runtime_seconds > before


# ---- a full disk -----------------------------------------------------------------------------------------------


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs mounted for the test (needs root with CAP_SYS_ADMIN), unmounted after it."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip() or 'mount failed'}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


class FillDisk(TrainerCallback):
    """Fills the disk but `spare` bytes at the end of step `step` (None: when training ends)."""

    def __init__(self, disk: Path, step: int | None, spare: int):
        self.ballast, self.step, self.spare = disk / "ballast", step, spare

    def fill(self) -> None:
        with self.ballast.open("wb") as handle:
            try:
                while True:
                    handle.write(bytes(1 << 16))
                    handle.flush()
            except OSError:
                pass
        with self.ballast.open("r+b") as handle:
            handle.truncate(max(0, self.ballast.stat().st_size - self.spare))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            self.fill()

    def on_train_end(self, args, state, control, **kwargs):
        if self.step is None:
            self.fill()


@pytest.mark.parametrize("step, spare, writing", [(3, 40_000, "a checkpoint"), (None, 60_000, "the merged model")])
def test_a_full_disk_fails_the_run_cleanly_and_resume_continues(uninterrupted, tiny_checkpoint, small_disk, home,
                                                                  step, spare, writing):
    whole = uninterrupted("lora", "fp32")
    recipe = recipe_for(small_disk, "x", tiny_checkpoint, uninterrupted.data, eval_every=None)
    run_root = Path(recipe["output"]["dir"])
    fill = FillDisk(small_disk, step, spare)
    with pytest.raises(TunelabError) as failure:
        train(recipe, home, callbacks=(fill,))
    line = str(failure.value)
    assert line.startswith("No space left on device: ") and str(run_root) in line and writing in line, line
    assert "\n" not in line and "--resume" in line
    assert run_record_at(recipe).status == "failed"
    assert not list(run_root.glob(".*.tmp"))
    for folder in (run_root / "checkpoints").iterdir():
        assert verify(folder) is None, folder  # nothing half-written is left
    if step is None:
        assert not (run_root / "merged").exists()
    fill.ballast.unlink()
    train(recipe, home, resume=True)
    assert run_record_at(recipe).status == "completed"
    assert_identical(weights(whole), weights(run_root))
