"""`tunelab train --nproc N [--nnodes M --node-rank R --master ADDR:PORT]`: one recipe on many processes.

    parent  (node 0)  set_up once (every check, the data doctor: its result is cached in the tunelab home, so the
                      workers find the data prepared), the run folder and run.json, the engine files in
                      <run>/launch/; prints the launch command of every node; runs torchrun; then evaluates once
    workers (torchrun) `tunelab train RECIPE --worker`: the training only, on the run folder the parent made
                      (as a --resume of it: the newest complete checkpoint, if any); rank 0 is the one writer of
                      run.json, train_log, checkpoint manifests and the saved model, the other ranks wait for it
    parent  (node >0) only starts this node's workers; the run folder (on a shared file system) is node 0's

The launcher is torchrun (`python -m torch.distributed.run`), the one PyTorch ships, run as a subprocess; tunelab
does not start or watch workers itself. What torchrun reports when a worker dies (its "Root Cause" block) is read
back into one line: which rank, its exit code or signal, and the command that continues the run.
"""

from __future__ import annotations

import gc
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from tunelab.errors import TunelabError
from tunelab.train.engines import World, check_engine, write_launch_files

if TYPE_CHECKING:
    from rich.console import Console

    from tunelab.config.schema import Recipe
    from tunelab.run.folder import RunDir
    from tunelab.train.lifecycle import Outcome, Setup

LAUNCH_FOLDER = "launch"
TORCHRUN_LOG = "torchrun.log"
# torchrun's own log lines (glog format: W1205 05:55:38.582000 2682 torch/distributed/elastic/...)
AGENT_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ torch/distributed/")
FAILED_LINE = re.compile(r"failed \(exitcode: (-?\d+)\) local_rank: (\d+)")


@dataclass(frozen=True)
class Rank:
    """This worker's place in a launched run, as torchrun's environment gives it (read at the CLI boundary)."""

    rank: int = 0
    world: World = World()

    @property
    def primary(self) -> bool:
        return self.rank == 0


def worker_rank(environ: dict[str, str]) -> Rank:
    """The rank and world torchrun (or accelerate launch) set for this process."""
    if "RANK" not in environ or "WORLD_SIZE" not in environ:
        raise TunelabError("--worker: no RANK/WORLD_SIZE in the environment; --worker is what torchrun runs, "
                           "start the run with `tunelab train RECIPE --nproc N`")
    size = int(environ["WORLD_SIZE"])
    local = int(environ.get("LOCAL_WORLD_SIZE", size))
    nnodes = max(1, size // max(1, local))
    return Rank(int(environ["RANK"]), World(nproc=local, nnodes=nnodes, node_rank=int(environ.get("GROUP_RANK", 0))))


def launch_folder(run: "RunDir") -> Path:
    return run.root / LAUNCH_FOLDER


# ---- commands ------------------------------------------------------------------------------------------------------


def torchrun_command(world: World, node_rank: int, recipe_path: Path, overrides: list[str], device: str) -> list[str]:
    """torchrun starting this node's workers; each runs `tunelab train RECIPE --worker`."""
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world.nproc)]
    if world.nnodes == 1 and world.master is None:
        command.append("--standalone")  # a free port on this machine
    else:
        address, port = world.master_address()
        command += ["--nnodes", str(world.nnodes), "--node-rank", str(node_rank), "--master-addr", address,
                    "--master-port", str(port)]
    return command + ["-m", "tunelab", "train", str(recipe_path), *overrides, "--worker", "--device", device]


def accelerate_command(launch: Path, recipe_path: Path, overrides: list[str], device: str) -> list[str]:
    """The same workers through `accelerate launch` and the config file tunelab wrote (for launching by hand)."""
    return ["accelerate", "launch", "--config_file", str(launch / "accelerate_config.yaml"), "-m", "tunelab",
            "train", str(recipe_path), *overrides, "--worker", "--device", device]


def world_flags(world: World) -> list[str]:
    """The `tunelab train` options that give this world (node 0's)."""
    if not world.distributed:
        return []
    flags = ["--nproc", str(world.nproc)]
    if world.nnodes > 1:
        flags += ["--nnodes", str(world.nnodes), "--master", str(world.master)]
    return flags


def user_command(recipe_path: Path, overrides: list[str], world: World, *flags: str) -> str:
    """`tunelab train ...` as the user runs it on node 0, with `flags` (e.g. --resume)."""
    return shlex.join(["tunelab", "train", str(recipe_path), *overrides, *world_flags(world), *flags])


def worker_environment(world: World, device: str, environ: dict[str, str] | None = None) -> dict[str, str]:
    """The workers' environment: this machine's cores shared out (torchrun would set 1 thread each), and
    accelerate told to stay on the CPU where the run does."""
    environment = dict(os.environ if environ is None else environ)
    environment["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // world.nproc))
    if device == "cpu":
        environment["ACCELERATE_USE_CPU"] = "true"
    return environment


# ---- parent ------------------------------------------------------------------------------------------------------


def launch_run(recipe: "Recipe", recipe_path: Path, overrides: list[str], home: Path, console: "Console",
               world: World, resume: bool = False, overwrite: bool = False, device: str = "auto",
               evaluate: bool = True, memory_budget: int | None = None) -> "Outcome | None":
    """Node 0: check, prepare, plan, launch, wait, evaluate once. Other nodes: launch this node's workers and wait.
    The plan's memory check is per process (one device each); on a CPU the processes share the machine's memory."""
    from tunelab.device import resolve_placement
    from tunelab.train.lifecycle import (
        Outcome,
        already_complete,
        build_model,
        evaluate_and_record,
        is_complete,
        plan_and_check,
        set_up,
        start,
    )

    if world.node_rank > 0:
        check_engine(recipe.train, world, resolve_placement(device, recipe.train.precision).device)
        command = torchrun_command(world, world.node_rank, recipe_path, overrides, device)
        console.print(f"node {world.node_rank}: {shlex.join(command)}", markup=False, soft_wrap=True)
        code, failure = run_workers(command, worker_environment(world, device), None)
        if code:
            raise TunelabError(failure_line(failure, code, user_command(recipe_path, overrides, world, "--resume")))
        return None
    setup = set_up(recipe, home, console, resume, overwrite, device)
    check_engine(recipe.train, world, setup.placement.device)
    if is_complete(setup):
        return already_complete(setup, home, console, device, evaluate)
    plan_and_check(setup, console, memory_budget)
    model = build_model(setup)  # run.json says what is trained (parameters); the workers build their own
    run, record = start(setup, model, console)
    del model
    gc.collect()
    launch = launch_folder(run)
    written = write_launch_files(recipe.train, world, setup.placement.device,
                                 setup.placement.precision == "bf16", launch)
    print_launch(console, world, recipe_path, overrides, device, launch, written)
    command = torchrun_command(world, 0, recipe_path, overrides, device)
    try:
        code, failure = run_workers(command, worker_environment(world, device), launch / TORCHRUN_LOG)
    except KeyboardInterrupt:
        mark_unfinished(run, "interrupted", "interrupted (Ctrl-C)")
        raise
    if code:
        line = failure_line(failure, code, user_command(recipe_path, overrides, world, "--resume"))
        mark_unfinished(run, "failed", line)
        raise TunelabError(line)
    from tunelab.run.record import read_record

    evaluation = None
    if evaluate and recipe.eval.after_train:
        evaluation = evaluate_and_record(run.root, home, console, device)
    return Outcome(run, read_record(run), evaluation)


def print_launch(console: "Console", world: World, recipe_path: Path, overrides: list[str], device: str,
                 launch: Path, written: list[Path]) -> None:
    """The files written and the exact command of each node, to run by hand or from a scheduler."""
    console.print(f"[dim]written {', '.join(str(path) for path in written)}[/dim]")
    for node in range(world.nnodes):
        command = shlex.join(torchrun_command(world, node, recipe_path, overrides, device))
        console.print(f"launch (node {node}): {command}", markup=False, soft_wrap=True)
    if world.nnodes == 1:
        console.print(f"or: {shlex.join(accelerate_command(launch, recipe_path, overrides, device))}",
                      markup=False, soft_wrap=True)


@dataclass(frozen=True)
class Failure:
    """What torchrun said about the first worker that failed."""

    rank: int | None = None
    exit_code: int | None = None
    signal: str | None = None


def run_workers(command: list[str], environment: dict[str, str], log: Path | None) -> tuple[int, Failure]:
    """Run torchrun; the workers' output goes through, torchrun's own log lines and its failure report go to
    `log` (they are read back into one line); torchrun's exit code and what failed."""
    process = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True, errors="replace")
    agent_lines: list[str] = []
    handle: TextIO | None = log.open("a", encoding="utf-8") if log else None
    try:
        reported = False  # after torchrun's "failed" line, everything on its stderr is its own report
        for line in process.stderr:
            reported = reported or bool(FAILED_LINE.search(line))
            if reported or AGENT_LINE.match(line):
                agent_lines.append(line)
                if handle:
                    handle.write(line)
            else:
                sys.stderr.write(line)
        code = process.wait()
    finally:
        if handle:
            handle.close()
        if process.poll() is None:  # interrupted: torchrun got the same Ctrl-C, it stops its workers
            process.wait()
    return code, read_failure(agent_lines)


def read_failure(lines: list[str]) -> Failure:
    """The root cause torchrun reports (rank, exit code, signal); its "failed ... local_rank" line otherwise."""
    text = "".join(lines)
    cause = text.partition("Root Cause (first observed failure):")[2]
    rank = re.search(r"rank\s*:\s*(\d+)", cause)
    code = re.search(r"exitcode\s*:\s*(-?\d+)", cause)
    signal = re.search(r"\((SIG[A-Z]+)\)", cause)
    if rank and code:
        return Failure(int(rank.group(1)), int(code.group(1)), signal.group(1) if signal else None)
    failed = FAILED_LINE.search(text)
    if failed:
        return Failure(int(failed.group(2)), int(failed.group(1)))
    return Failure()


def failure_line(failure: Failure, code: int, resume_command: str) -> str:
    """One line: which rank died and how, and the command that continues the run."""
    if failure.rank is None:
        how = f"the workers failed (torchrun exit code {code})"
    elif failure.signal:
        how = f"rank {failure.rank} died ({failure.signal}, exit code {failure.exit_code})"
    else:
        how = f"rank {failure.rank} failed (exit code {failure.exit_code})"
    return f"{how}; `{resume_command}` continues from the last complete checkpoint"


def mark_unfinished(run: "RunDir", status: str, line: str) -> None:
    """run.json says the run did not finish (a worker killed by a signal could not say so itself)."""
    from tunelab.run.record import now, read_record, write_record

    try:
        record = read_record(run)
    except TunelabError:
        return
    if record.status == "completed":
        return
    record.status, record.error, record.ended_at = status, line, now()
    write_record(run, record)


# ---- worker ------------------------------------------------------------------------------------------------------


def train_worker(recipe: "Recipe", home: Path, console: "Console", rank: Rank, device: str = "auto") -> None:
    """One torchrun worker: the run folder the parent made, trained from its newest complete checkpoint."""
    from tunelab.run.folder import RunDir
    from tunelab.run.record import read_record
    from tunelab.train.lifecycle import build_model, finish, fit, set_up

    setup = set_up(recipe, home, console, resume=True, overwrite=False, device=device)
    setup = replace(setup, world=rank.world, rank=rank.rank)
    model = build_model(setup)
    run = RunDir(Path(setup.recipe.output.dir))
    record = read_record(run)
    fit(setup, run, record, model, console, ())
    del model  # as in lifecycle.run_recipe: training's memory goes before rank 0 merges
    finish(setup, run, record, console)



def savable_model(setup: "Setup", trainer: Any) -> Any:
    """The trained model as the method's `save` reads it: the trainer's own where each rank holds whole weights
    (one process, DDP, ZeRO-1/2); under FSDP and ZeRO-3, whose ranks hold shards, the whole state dict gathered by
    accelerate (a collective: every rank calls this) and loaded on rank 0 into a fresh, unsharded copy of the model
    (None on the other ranks). The methods then save as they always do, from ordinary tensors."""
    from tunelab.train.lifecycle import build_model

    train = setup.recipe.train
    sharded = train.distributed == "fsdp" or (train.distributed == "deepspeed" and train.deepspeed.stage == 3)
    wrapped = trainer.model_wrapped  # accelerate gathers from what it prepared (the DeepSpeed engine, the FSDP module)
    never_prepared = (train.distributed == "deepspeed"
                      and not hasattr(wrapped, "zero_gather_16bit_weights_on_model_save"))
    if not sharded or never_prepared:  # (a --resume of a finished run loads its weights whole, without training)
        return trainer.model
    state = trainer.accelerator.get_state_dict(wrapped)
    if setup.rank != 0:
        return None
    model = build_model(setup)
    _, unexpected = model.load_state_dict(state, strict=False)  # tied weights may be left out of `state`
    if unexpected:
        raise TunelabError(f"the gathered {train.distributed} weights do not fit the model: {unexpected[:3]}")
    return model
