"""`tunelab train --nproc 2` on CPU (gloo, torchrun): the same training as one process with the same global batch,
a killed rank reported in one line and continued by --resume, every task under DDP, and the engine files tunelab
writes read back by accelerate's and DeepSpeed's own config classes."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from rich.console import Console
from safetensors.torch import load_file

from tests.conftest import reverse_rows, run_record, tiny_recipe, train_recipe, write_jsonl
from tests.unit.test_classification import classification_recipe, tiny_encoder, vowel_rows  # noqa: F401 (fixture)
from tests.unit.test_dpo import dpo_recipe, planted_pairs
from tunelab.config.load import validate_recipe
from tunelab.errors import TunelabError
from tunelab.train.checkpoints import MANIFEST
from tunelab.train.distributed import Failure, failure_line, launch_run, read_failure
from tunelab.train.engines import World, check_engine, write_launch_files

QUIET = Console(quiet=True)
STEPS = 24


def write_recipe(tmp_path, recipe: dict):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


def launch(tmp_path, recipe: dict, home, nproc=2, **options):
    """Node 0 of a run on `nproc` CPU processes, as `tunelab train RECIPE --nproc N --no-eval` runs it."""
    path = write_recipe(tmp_path, recipe)
    outcome = launch_run(validate_recipe(recipe), path, [], home, QUIET, World(nproc=nproc), device="cpu",
                         evaluate=False, **options)
    return outcome.run


def sft_recipe(tmp_path, checkpoint, data, batch_size):
    return tiny_recipe(tmp_path, checkpoint, data,
                       train={"max_steps": STEPS, "batch_size": batch_size, "save_every": 4, "eval_every": 12,
                              "report_to": [], "scheduler": "linear"})


def losses(run):
    return [entry["loss"] for entry in map(json.loads, run.train_log.read_text().splitlines()) if "loss" in entry]


def adapter(run):
    return load_file(str(run.model / "adapter_model.safetensors"))


def assert_same_weights(first, second, atol=1e-5):
    assert first.keys() == second.keys()
    worst = max((first[name] - second[name]).abs().max().item() for name in first)
    assert worst < atol, f"largest weight difference {worst}"


@pytest.fixture
def data(tmp_path):
    return write_jsonl(tmp_path / "reverse.jsonl", reverse_rows(60))


def test_two_processes_train_as_one_with_the_same_global_batch(tiny_checkpoint, data, tmp_path, home):
    one = train_recipe(sft_recipe(tmp_path / "one", tiny_checkpoint, data, batch_size=4), home)
    two = launch(tmp_path, sft_recipe(tmp_path / "two", tiny_checkpoint, data, batch_size=2), home)
    record = run_record(two)
    assert record.status == "completed" and record.training.steps == STEPS
    assert record.training.tokens_seen == run_record(one).training.tokens_seen  # both ranks' tokens counted
    assert losses(two) == pytest.approx(losses(one), rel=1e-4)
    assert len(losses(two)) == STEPS
    assert_same_weights(adapter(one), adapter(two))
    written = yaml.safe_load((two.root / "launch" / "accelerate_config.yaml").read_text())
    assert written["distributed_type"] == "MULTI_CPU" and written["num_processes"] == 2 and written["use_cpu"]


def rank_process(parent_pid: int, rank: int):
    """The torchrun worker of `rank` under `parent_pid` (found by the RANK torchrun gave it)."""
    import psutil

    for child in psutil.Process(parent_pid).children(recursive=True):
        try:
            if child.environ().get("RANK") == str(rank) and "--worker" in child.cmdline():
                return child
        except psutil.Error:
            continue
    return None


def test_a_killed_rank_fails_in_one_line_and_resume_finishes_the_same_run(tiny_checkpoint, data, tmp_path, home):
    recipe = sft_recipe(tmp_path / "killed", tiny_checkpoint, data, batch_size=2)
    path = write_recipe(tmp_path, recipe)
    run_root = tmp_path / "killed" / "run"
    errors = (tmp_path / "stderr.txt").open("w+")
    command = [sys.executable, "-m", "tunelab", "train", str(path), "--nproc", "2", "--device", "cpu", "--no-eval"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=errors, env=dict(os.environ))
    try:
        deadline = time.monotonic() + 240
        while not (run_root / "checkpoints" / "checkpoint-4" / MANIFEST).is_file():
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before checkpoint-4"
            time.sleep(0.02)
        victim = rank_process(process.pid, 1)
        assert victim is not None
        victim.send_signal(signal.SIGKILL)
        assert process.wait(timeout=240) != 0
    finally:
        if process.poll() is None:
            process.kill()
    errors.seek(0)
    last = errors.read().strip().splitlines()[-1]
    assert "rank 1 died (SIGKILL" in last and f"tunelab train {path} --nproc 2 --resume" in last, last
    from tunelab.run.folder import RunDir

    killed = RunDir(run_root)
    record = run_record(killed)
    assert record.status == "failed" and "rank 1 died" in record.error
    assert not killed.model.exists()

    resumed = launch(tmp_path, recipe, home, resume=True)
    assert run_record(resumed).status == "completed" and run_record(resumed).training.steps == STEPS
    assert len(losses(resumed)) == STEPS  # each step logged once, by rank 0
    uninterrupted = train_recipe(sft_recipe(tmp_path / "whole", tiny_checkpoint, data, batch_size=4), home)
    assert_same_weights(adapter(uninterrupted), adapter(resumed))


def test_dpo_trains_on_two_processes(tiny_checkpoint, tmp_path, home):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", planted_pairs(80))
    recipe = dpo_recipe(tmp_path, tiny_checkpoint, pairs, train={"report_to": [], "batch_size": 2})
    run = launch(tmp_path, recipe, home)
    record = run_record(run)
    assert record.status == "completed" and record.training.steps == 6
    assert (run.model / "adapter_model.safetensors").is_file()
    assert all(loss == loss for loss in losses(run))  # finite, logged by rank 0 only: one entry per step
    assert len(losses(run)) == 6


def test_classification_trains_on_two_processes(tiny_encoder, tmp_path, home):  # noqa: F811 (fixture)
    vowels = write_jsonl(tmp_path / "vowels.jsonl", vowel_rows(80))
    recipe = classification_recipe(tmp_path, tiny_encoder, vowels, train={"report_to": [], "batch_size": 8})
    run = launch(tmp_path, recipe, home)
    record = run_record(run)
    assert record.status == "completed" and record.training.steps == 6
    assert len(losses(run)) == 6


# ---- the engines' own config classes read what tunelab writes -----------------------------------------------------


def train_section(tmp_path, tiny_checkpoint, **train):
    return validate_recipe(tiny_recipe(tmp_path, tiny_checkpoint, tmp_path / "x.jsonl", train=train)).train


def test_deepspeed_json_loads_in_deepspeeds_and_accelerates_config_classes(tiny_checkpoint, tmp_path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations import HfDeepSpeedConfig

    train = train_section(tmp_path, tiny_checkpoint, distributed="deepspeed", batch_size=3, grad_accum=2,
                          deepspeed={"stage": 3, "offload_optimizer": "cpu", "offload_params": "cpu"})
    launch_dir = tmp_path / "launch"
    written = write_launch_files(train, World(nproc=2), "cuda", True, launch_dir)
    config_file = launch_dir / "deepspeed.json"
    assert config_file in written

    speed = DeepSpeedConfig(str(config_file))
    assert speed.zero_optimization_stage == 3
    assert speed.zero_config.offload_optimizer.device == "cpu" and speed.zero_config.offload_param.device == "cpu"
    assert speed.train_micro_batch_size_per_gpu == 3 and speed.gradient_accumulation_steps == 2
    assert speed.bfloat16_config.enabled
    hf = HfDeepSpeedConfig(str(config_file))
    assert hf.is_zero3() and hf.is_offload()

    accelerate_file = load_config_from_file(str(launch_dir / "accelerate_config.yaml"))
    assert accelerate_file.distributed_type == "DEEPSPEED" and accelerate_file.num_processes == 2
    assert accelerate_file.mixed_precision == "bf16"
    plugin = DeepSpeedPlugin(hf_ds_config=accelerate_file.deepspeed_config["deepspeed_config_file"])
    assert plugin.zero_stage == 3 and plugin.offload_optimizer_device == "cpu"


def test_zero2_without_offload_says_so(tiny_checkpoint, tmp_path):
    from deepspeed.runtime.config import DeepSpeedConfig

    train = train_section(tmp_path, tiny_checkpoint, distributed="deepspeed")
    write_launch_files(train, World(nproc=1, nnodes=2, master="10.0.0.1:29500"), "cuda", False, tmp_path)
    speed = DeepSpeedConfig(str(tmp_path / "deepspeed.json"))
    assert speed.zero_optimization_stage == 2 and not speed.zero_config.offload_optimizer
    assert not speed.bfloat16_config.enabled


@pytest.mark.parametrize("sharding, resharded, nnodes", [("full_shard", True, 1), ("shard_grad_op", False, 1),
                                                        ("hybrid_shard", True, 2)])
def test_fsdp_config_loads_in_accelerates_launcher_and_plugin(tiny_checkpoint, tmp_path, monkeypatch, sharding,
                                                              resharded, nnodes):
    """The accelerate config file goes through `accelerate launch`'s own parsing into the environment the workers
    get, and FullyShardedDataParallelPlugin reads that environment: what the user asked is what FSDP is told."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    train = train_section(tmp_path, tiny_checkpoint, distributed="fsdp",
                          fsdp={"sharding": sharding, "cpu_offload": True, "activation_checkpointing": True})
    world = World(nproc=2, nnodes=nnodes, master="10.0.0.1:29500" if nnodes > 1 else None)
    write_launch_files(train, world, "cuda", True, tmp_path)
    config_file = tmp_path / "accelerate_config.yaml"
    arguments = launch_command_parser().parse_args(["--config_file", str(config_file), "train.py"])
    arguments, *_ = _validate_launch_command(arguments)
    environment = prepare_multi_gpu_env(arguments)
    assert environment["ACCELERATE_USE_FSDP"] == "true"
    if sharding == "hybrid_shard":  # replicated across the nodes, sharded within each
        assert environment["PARALLELISM_CONFIG_DP_REPLICATE_SIZE"] == "2"
        assert environment["PARALLELISM_CONFIG_DP_SHARD_SIZE"] == "2"
        assert (arguments.num_machines, arguments.main_process_ip) == (2, "10.0.0.1")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    plugin = FullyShardedDataParallelPlugin()
    assert plugin.fsdp_version == 2
    assert plugin.reshard_after_forward is resharded
    assert type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy"  # FSDP2's offload of weights and their state
    assert plugin.activation_checkpointing is True
    assert "FULL_STATE_DICT" in str(plugin.state_dict_type)


def test_fsdp_training_arguments_say_what_was_asked(tiny_checkpoint, tmp_path):
    from tunelab.train.engines import engine_arguments

    train = train_section(tmp_path, tiny_checkpoint, distributed="fsdp", fsdp={"sharding": "shard_grad_op"})
    arguments = engine_arguments(train, World(nproc=2), tmp_path)
    assert arguments["fsdp"] is True and arguments["fsdp_config"]["version"] == 2
    assert arguments["fsdp_config"]["reshard_after_forward"] is False
    hybrid = train_section(tmp_path, tiny_checkpoint, distributed="fsdp", fsdp={"sharding": "hybrid_shard"})
    mesh = engine_arguments(hybrid, World(nproc=4, nnodes=2, master="h:1"), tmp_path)["parallelism_config"]
    assert (mesh.dp_replicate_size, mesh.dp_shard_size) == (2, 4)
    assert engine_arguments(train_section(tmp_path, tiny_checkpoint), World(), tmp_path) == {}  # one plain process


# ---- refusals and the failure line -------------------------------------------------------------------------------


@pytest.mark.parametrize("train, expected", [
    ({"distributed": "fsdp"}, "fsdp needs GPUs"),
    ({"distributed": "deepspeed"}, "deepspeed needs GPUs"),
])
def test_engines_that_cannot_run_on_cpu_are_refused_in_one_line(tiny_checkpoint, tmp_path, train, expected):
    with pytest.raises(TunelabError, match=expected):
        check_engine(train_section(tmp_path, tiny_checkpoint, **train), World(nproc=2), "cpu")


def test_offloading_weights_needs_zero_3(tiny_checkpoint, tmp_path):
    with pytest.raises(TunelabError, match="offload_params needs stage: 3"):
        train_section(tmp_path, tiny_checkpoint, distributed="deepspeed", deepspeed={"offload_params": "cpu"})


def test_torchruns_root_cause_becomes_one_line():
    report = ("E1205 05:55:38.598000 2682 torch/distributed/elastic/multiprocessing/api.py:1002] failed "
              "(exitcode: -9) local_rank: 1 (pid: 2687) of binary: python\n") + """Failures:
[1]:
  rank      : 0 (local_rank: 0)
  exitcode  : -15 (pid: 2686)  (SIGTERM)
Root Cause (first observed failure):
[0]:
  rank      : 3 (local_rank: 1)
  exitcode  : -9 (pid: 2687)  (SIGKILL)
"""
    failure = read_failure(report.splitlines(keepends=True))
    assert failure == Failure(rank=3, exit_code=-9, signal="SIGKILL")
    line = failure_line(failure, 1, "tunelab train r.yaml --nproc 2 --resume")
    assert line == ("rank 3 died (SIGKILL, exit code -9); `tunelab train r.yaml --nproc 2 --resume` continues from "
                    "the last complete checkpoint")
    assert "rank 1 failed (exit code 1)" in failure_line(Failure(1, 1), 1, "x")


def test_cli_checks_the_world_in_one_line(tmp_path, capsys):
    from tests.unit.test_cli import invoke, one_error_line

    data = write_jsonl(tmp_path / "x.jsonl", reverse_rows(20))
    path = write_recipe(tmp_path, {"data": {"train": str(data)}, "output": {"dir": str(tmp_path / "run")}})
    code, _, err = invoke(capsys, "train", str(path), "--nproc", "2", "--nnodes", "2", "--master", "nohost")
    assert code != 0 and "--master 'nohost': give ADDR:PORT" in one_error_line(err)
    code, _, err = invoke(capsys, "train", str(path), "--nnodes", "2", "--node-rank", "2", "--master", "h:1")
    assert code != 0 and "--node-rank 2" in one_error_line(err)


def test_one_process_goes_through_the_launcher_only_for_a_named_engine(tiny_checkpoint, tmp_path):
    from tunelab.train.engines import engine_arguments, needs_launcher

    plain = train_section(tmp_path, tiny_checkpoint)
    zero = train_section(tmp_path, tiny_checkpoint, distributed="deepspeed")
    assert not needs_launcher(plain, World()) and needs_launcher(plain, World(nproc=2))
    assert needs_launcher(zero, World())  # ZeRO on one GPU (offload): through torchrun and DeepSpeed
    assert engine_arguments(zero, World(), tmp_path) == {"deepspeed": str(tmp_path / "deepspeed.json")}


def test_ppo_trains_on_two_processes_with_each_ranks_rollouts_in_the_checkpoint(tiny_checkpoint, tmp_path, home):
    """PPO samples with the model itself (DDP's wrapper has no generate) and averages its value head's gradients
    across ranks; each rank's rollouts are kept in the checkpoint for --resume."""
    from tests.unit.test_online_rl import TASKS, online_recipe, prompt_rows

    prompts = write_jsonl(tmp_path / "prompts.jsonl", prompt_rows())
    run = launch(tmp_path, online_recipe(tmp_path, tiny_checkpoint, prompts, TASKS["ppo"],
                                         train={"report_to": [], "batch_size": 4}), home)
    assert run_record(run).status == "completed" and run_record(run).training.steps == 6
    checkpoint = run.checkpoints / "checkpoint-6"
    manifest = json.loads((checkpoint / MANIFEST).read_text())["files"]
    assert {"rollouts.pt", "rollouts-1.pt", "value_head.safetensors", "rng_state_1.pth"} <= set(manifest)
