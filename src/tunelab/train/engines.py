"""The engine settings of a multi-process run, from the recipe's `train.distributed` / `train.deepspeed` /
`train.fsdp`: the TrainingArguments that make transformers' (and TRL's) Trainer run under DDP, FSDP2 or DeepSpeed
ZeRO, and the same settings as the engines' own files in `<run>/launch/` (accelerate_config.yaml, deepspeed.json),
so that a user can launch the run by hand with `accelerate launch` and get what tunelab's torchrun launch gets.

The Trainer is told the settings directly (fsdp_config / deepspeed), not through accelerate's environment variables:
tunelab's own launch goes through torchrun, and a setting read from the environment deep inside a run is a setting
a reader of the recipe cannot see.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from tunelab.config.schema import TrainSection

ACCELERATE_CONFIG = "accelerate_config.yaml"
DEEPSPEED_CONFIG = "deepspeed.json"


@dataclass(frozen=True)
class World:
    """The processes of a run: `nproc` per node on `nnodes` machines; node 0 hosts the rendezvous at `master`."""

    nproc: int = 1
    nnodes: int = 1
    node_rank: int = 0
    master: str | None = None  # "ADDR:PORT"; None on one node (torchrun --standalone picks a free port)

    @property
    def size(self) -> int:
        return self.nproc * self.nnodes

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def master_address(self) -> tuple[str, int]:
        address, _, port = (self.master or "").rpartition(":")
        if not address or not port.isdigit():
            raise TunelabError(f"--master {self.master!r}: give ADDR:PORT of node 0, e.g. 10.0.0.1:29500")
        return address, int(port)


def needs_launcher(train: "TrainSection", world: World) -> bool:
    """Whether the run goes through torchrun: several processes, or an engine asked for by name (FSDP or DeepSpeed
    on one GPU: ZeRO's offload, or the same engine as the multi-GPU run it prepares)."""
    return world.distributed or train.distributed != "ddp"


def check_engine(train: "TrainSection", world: World, device: str) -> None:
    """Refuse in one line what the engine cannot do here, before anything is written."""
    if not needs_launcher(train, world):
        return
    if train.distributed == "deepspeed" and device == "cpu":
        raise TunelabError("train.distributed: deepspeed needs GPUs (DeepSpeed has no CPU accelerator in this "
                           "install); on CPU use train.distributed: ddp")
    if train.distributed == "fsdp" and device == "cpu":
        # accelerate's AcceleratorState turns FSDP on for GPU-type devices only; on MULTI_CPU (gloo) it drops the
        # plugin and trains with DDP, so a CPU "fsdp" run would not be one
        raise TunelabError("train.distributed: fsdp needs GPUs (accelerate applies FSDP to GPU-type devices only; "
                           "on CPU it would silently train with DDP); on CPU use train.distributed: ddp")
    if train.distributed == "fsdp" and train.fsdp.sharding == "no_shard":
        raise TunelabError("train.fsdp.sharding: no_shard is DDP (FSDP2 has no unsharded mode); set "
                           "train.distributed: ddp")
    if train.distributed == "fsdp" and train.fsdp.sharding == "hybrid_shard" and world.nnodes < 2:
        raise TunelabError("train.fsdp.sharding: hybrid_shard shards within a node and replicates across nodes; "
                           "on one node use full_shard")


def fsdp_config(train: "TrainSection") -> dict[str, Any]:
    """transformers' `fsdp_config` (TrainingArguments) for FSDP2. FSDP2 says what is sharded with one switch:
    full_shard frees the gathered weights after the forward (reshard_after_forward), shard_grad_op keeps them
    for the backward; hybrid_shard is full_shard over a 2-D mesh (parallelism_config)."""
    fsdp = train.fsdp
    return {
        "version": 2,
        "reshard_after_forward": fsdp.sharding != "shard_grad_op",
        "cpu_offload": fsdp.cpu_offload,
        "activation_checkpointing": fsdp.activation_checkpointing,
        "auto_wrap_policy": "TRANSFORMER_BASED_WRAP",  # the model's decoder layers (_no_split_modules)
        "state_dict_type": "FULL_STATE_DICT",  # checkpoints and the saved model stay plain HF files
    }


def deepspeed_config(train: "TrainSection", bf16: bool) -> dict[str, Any]:
    """DeepSpeed's JSON config. Batch sizes, clipping and precision are written as the recipe says (not "auto"),
    so DeepSpeed's own config class reads the same numbers the Trainer checks them against; train_batch_size is
    left out: DeepSpeed derives it from these and the world size."""
    speed = train.deepspeed
    zero: dict[str, Any] = {"stage": speed.stage, "overlap_comm": speed.overlap_comm, "contiguous_gradients": True}
    if speed.offload_optimizer == "cpu":
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": True}
    if speed.offload_params == "cpu":
        zero["offload_param"] = {"device": "cpu", "pin_memory": True}
    if speed.stage == 3:
        # one whole HF state dict on save, as the other engines write it
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    return {
        "zero_optimization": zero,
        "bf16": {"enabled": bf16},
        "fp16": {"enabled": False},
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": train.max_grad_norm,
        # The Trainer's own AdamW runs on the offloaded (CPU) state: DeepSpeedCPUAdam would need a C++ build
        # on the machine, and the Trainer's optimizer is what the other engines train with.
        "zero_force_ds_cpu_optimizer": False,
        "zero_allow_untested_optimizer": True,
    }


def engine_arguments(train: "TrainSection", world: World, launch: Path | None) -> dict[str, Any]:
    """TrainingArguments keywords for the engine (none for one process or DDP beyond transformers' defaults)."""
    if not needs_launcher(train, world):
        return {}
    arguments: dict[str, Any] = {}
    if world.distributed:
        arguments["ddp_find_unused_parameters"] = False  # every trainable weight gets a gradient
    if train.distributed == "fsdp":
        arguments.update(fsdp=True, fsdp_config=fsdp_config(train))
        if train.fsdp.sharding == "hybrid_shard":
            from accelerate.parallelism_config import ParallelismConfig

            arguments["parallelism_config"] = ParallelismConfig(dp_replicate_size=world.nnodes,
                                                                dp_shard_size=world.nproc)
    elif train.distributed == "deepspeed":
        if launch is None:
            raise TunelabError("train.distributed: deepspeed: no <run>/launch/deepspeed.json was written")
        arguments["deepspeed"] = str(launch / DEEPSPEED_CONFIG)
    return arguments


def accelerate_config(train: "TrainSection", world: World, device: str, bf16: bool,
                      launch: Path) -> dict[str, Any]:
    """accelerate's config file (what `accelerate config` writes) for the same run."""
    cpu = device == "cpu"
    engine = {"ddp": "MULTI_CPU" if cpu else "MULTI_GPU", "fsdp": "FSDP", "deepspeed": "DEEPSPEED"}
    config: dict[str, Any] = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": engine[train.distributed],
        "num_processes": world.size,
        "num_machines": world.nnodes,
        "machine_rank": world.node_rank,
        "mixed_precision": "bf16" if bf16 else "no",
        "use_cpu": cpu,
        "rdzv_backend": "static",
        "same_network": True,
    }
    if world.nnodes > 1:
        address, port = world.master_address()
        config.update(main_process_ip=address, main_process_port=port)
    if train.distributed == "fsdp":
        fsdp = fsdp_config(train)
        config["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_reshard_after_forward": fsdp["reshard_after_forward"],
            "fsdp_offload_params": fsdp["cpu_offload"],
            "fsdp_activation_checkpointing": fsdp["activation_checkpointing"],
            "fsdp_auto_wrap_policy": fsdp["auto_wrap_policy"],
            "fsdp_state_dict_type": fsdp["state_dict_type"],
            "fsdp_cpu_ram_efficient_loading": False,
        }
        if train.fsdp.sharding == "hybrid_shard":
            config["parallelism_config"] = {"parallelism_config_dp_replicate_size": world.nnodes,
                                            "parallelism_config_dp_shard_size": world.nproc}
    if train.distributed == "deepspeed":
        config["deepspeed_config"] = {"deepspeed_config_file": str(launch / DEEPSPEED_CONFIG),
                                      "zero3_init_flag": train.deepspeed.stage == 3}
    return config


def write_launch_files(train: "TrainSection", world: World, device: str, bf16: bool, launch: Path) -> list[Path]:
    """Write `<run>/launch/accelerate_config.yaml` (and deepspeed.json under deepspeed); the paths written."""
    import yaml

    from tunelab.files import write_text_atomic

    launch.mkdir(parents=True, exist_ok=True)
    written = [launch / ACCELERATE_CONFIG]
    write_text_atomic(written[0], yaml.safe_dump(accelerate_config(train, world, device, bf16, launch),
                                                 sort_keys=False))
    if train.distributed == "deepspeed":
        written.append(launch / DEEPSPEED_CONFIG)
        write_text_atomic(written[1], json.dumps(deepspeed_config(train, bf16), indent=2) + "\n")
    return written
