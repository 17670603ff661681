"""The memory a run takes per device, term by term, as tunelab's trainer holds things.

Weights: the base loads in fp32 (models/load.py); in bf16, methods that allow it hold the frozen base in bf16
(train/frozen_weights.py), QLoRA holds its linear layers in NF4 (models/quantize.py: 4-bit values, an int8 scale per
block, an fp32 scale per group of scales) and the embedding in fp32. Trained parameters are fp32, with an fp32
gradient and AdamW's two fp32 states each. Under bf16 autocast, a trained weight that a matmul reads is cast to bf16
once and the cast kept until the backward (torch's autocast cache holds casts of leaf tensors): full fine-tuning
holds a bf16 copy of every linear weight.

Activations (what the forward saves for the backward), per token and decoder layer, counted from what each op of a
Llama-style layer saves under tunelab's speed levers (tests/unit/test_plan.py checks the count against the bytes a
real forward saves):
  each RMSNorm saves its input upcast to fp32 (4h), and, where its weight trains, its fp32 normalized output (4h)
  the normalized input of the attention and of the MLP, in the compute dtype: one copy where the residual stream
    already is that dtype, else one autocast copy for each trained linear that reads it (q, k, v; gate, up)
  the attention output (o_proj's input, h) and the MLP's gate, SiLU, up and product (4 x intermediate)
  row attention (train/row_attention.py) keeps q, k, v and the output in fp32 on the [rows x longest row] grid
  LoRA's down-projection (r per adapted layer)
and the head: the logits at label positions (train/label_loss.py; every position without it), with their fp32
upcast and log-softmax. Gradient checkpointing keeps only each layer's input, and recomputes one layer at a time.
The backward and the allocator take about half as much again (BACKWARD_FACTOR, measured).

The process: importing Python, torch, transformers, peft, trl and datasets takes a fixed resident size
(IMPORT_OVERHEAD_MIB, measured by measure_import_overhead), and the run has phases whose peaks differ: loading the
fp32 base (LOAD_FACTOR, measured), training, and (for adapters that merge) loading a fresh fp32 base once
training's model, trainer and the memory they freed are gone (train/lifecycle.py finish, train/host_memory.py): the
overhead plus the base (two for QLoRA, which quantizes it and dequantizes it again). The peak RSS is the largest
phase.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunelab.plan.data_size import Batch
    from tunelab.plan.model_size import Architecture, ModelSize

MIB = 2**20
# VmRSS of a fresh process after importing the training stack (python + torch + transformers + peft + trl +
# datasets + tunelab's trainer), on the CPU machine this was written on: measure_import_overhead() gives it again
# (bench/plan_accuracy.py prints both). It does not depend on the model.
IMPORT_OVERHEAD_MIB = 490.0
# What the run adds besides imports and tensors the model owns: the tokenizer, the data sets, the Trainer and its
# dataloader, the allocator's arenas. Measured as the rest of the peak RSS of the tiny-model runs (tens of MiB).
RUN_OVERHEAD_MIB = 60.0
NF4_BLOCK_SCALER = 256  # torchao's scales per int8 group (QloraConfig.scaler_block_size's default)
LABEL_CHUNK = 1024  # train/label_loss.py CHUNK_ROWS
# The peak is not the saved activations alone: the backward holds the gradients of the activations it walks through
# beside the ones still saved, and the allocator keeps blocks freed by earlier steps of other sizes. Measured: the
# peak RSS of `tunelab train` with LoRA beyond the other terms, over the saved activations counted here, was
# 1.48-1.55 on the quick start, CoNaLa and SMS (README's bench/train_throughput.py runs, 12 steps).
BACKWARD_FACTOR = 1.5
# Loading a checkpoint takes more than its fp32 weights: transformers reads the safetensors file through a memory map
# (its pages count in RSS while mapped) and builds the model before filling it. Measured: the RSS jump while
# `tunelab train` loads SmolLM2-135M (fp32 file, 514 MiB of weights) was 1,450 MiB (bench/plan_accuracy.py series).
# The allocator keeps that memory and training reuses it: the training phase's RSS is at least the loading's.
LOAD_FACTOR = 2.7


@dataclass(frozen=True)
class Holding:
    """How the trainer holds the model: what the memory terms depend on besides the model and the batch."""

    compute_bytes: int  # 2 under bf16/fp16 autocast, 4 in fp32
    frozen_bytes: float  # bytes per frozen base parameter: 4 (fp32), 2 (bf16_frozen)
    nf4_block: int | None  # QLoRA's NF4 block size (its linear layers are 4-bit), None otherwise
    stream_bytes: int  # the residual stream's dtype: bf16 where the embedding is held in bf16, else fp32
    norms_train: bool  # the norm weights train (full fine-tuning)
    trained_linears: int  # linear layers per decoder layer that train (or carry a trained adapter)
    lora_rank: int  # r of the adapter's down projections (0 where none)
    label_loss: bool  # logits at label positions only (train/label_loss.py)
    row_attention: bool  # train/row_attention.py (padding-free batches)
    checkpointing: bool  # train.gradient_checkpointing
    merges: bool  # a merged model is written after training (a second fp32 base is loaded)
    device: str  # cpu | cuda
    length_multiple: int | None = None  # padding-free batches rounded up to this many tokens (train/batches.py)


@dataclass(frozen=True)
class Memory:
    """Bytes, per term; `peak` is the estimated peak RSS (CPU) or peak GPU memory (CUDA)."""

    overhead: int
    weights: int
    adapter: int
    gradients: int
    optimizer: int
    autocast_copies: int
    activations: int
    activations_checkpointed: int
    activations_plain: int
    load_peak: int
    train_peak: int
    merge_peak: int
    peak: int

    def as_mib(self) -> dict[str, float]:
        return {name: round(value / MIB, 1) for name, value in asdict(self).items()}


def nf4_bytes(count: int, block: int) -> float:
    """Bytes of `count` weights in torchao's NF4: 4 bits each, an int8 scale per block, an fp32 scale per group."""
    return count / 2 + count / block + 4 * count / (block * NF4_BLOCK_SCALER)


def weight_bytes(size: "ModelSize", holding: Holding) -> tuple[int, int]:
    """(frozen base as held, trained parameters in fp32). A full fine-tune trains the base: nothing is frozen."""
    frozen = size.total - size.trainable
    if holding.nf4_block:
        held = nf4_bytes(size.quantizable, holding.nf4_block) + 4 * (frozen - size.quantizable)
    else:
        held = holding.frozen_bytes * frozen
    return int(held), 4 * size.trainable


def layer_bytes_per_token(arch: "Architecture", holding: Holding) -> float:
    """Bytes one decoder layer saves for the backward per token (row attention's grid apart)."""
    h, c = arch.hidden, holding.compute_bytes
    norms = 2 * 4 * h + (2 * 4 * h if holding.norms_train else 0)
    shared_input = holding.stream_bytes == c or holding.trained_linears == 0
    copies = 2 if shared_input else min(holding.trained_linears, 5)  # q, k, v and gate, up read the two inputs
    inputs = copies * c * h
    attention_out = c * h
    mlp = 4 * c * arch.intermediate
    adapter = holding.trained_linears * holding.lora_rank * c
    attention = 0 if holding.row_attention else attention_bytes_per_token(arch, c)
    return norms + inputs + attention_out + mlp + adapter + attention


def attention_bytes_per_token(arch: "Architecture", dtype_bytes: int) -> float:
    """q, k, v and the attention output, kept by scaled_dot_product_attention."""
    q = arch.heads * arch.head_dim
    return dtype_bytes * (2 * q + 2 * arch.kv_heads * arch.head_dim)


def activation_bytes(arch: "Architecture", holding: Holding, batch: "Batch", checkpointing: bool) -> int:
    """What one micro-batch's forward keeps for its backward (checkpointed: each layer's input, and one layer's
    activations while it is recomputed)."""
    c = holding.compute_bytes
    tokens = batch.tokens
    per_layer = layer_bytes_per_token(arch, holding) * tokens
    if holding.row_attention:
        per_layer += attention_bytes_per_token(arch, 4) * batch.padded_tokens  # fp32 on the padded grid
    head_positions = batch.label_tokens if holding.label_loss else tokens
    fp32_positions = min(head_positions, LABEL_CHUNK) if holding.label_loss else head_positions
    head = arch.hidden * (4 + c) * tokens + arch.vocabulary * (c * head_positions + 8 * fp32_positions)
    if checkpointing:  # each layer's input kept; one layer recomputed at a time in the backward
        kept = arch.layers * holding.stream_bytes * arch.hidden * tokens + per_layer
    else:
        kept = arch.layers * per_layer
    return int(kept + head)


def estimate_memory(size: "ModelSize", holding: Holding, peak_batch: "Batch",
                    overhead_mib: float = IMPORT_OVERHEAD_MIB + RUN_OVERHEAD_MIB) -> Memory:
    arch = size.architecture
    frozen, trained = weight_bytes(size, holding)
    gradients, optimizer = trained, 2 * trained  # fp32 gradient; AdamW's exp_avg and exp_avg_sq
    autocast = 2 * size.autocast_weights if holding.compute_bytes == 2 else 0
    plain = int(BACKWARD_FACTOR * activation_bytes(arch, holding, peak_batch, checkpointing=False))
    checkpointed = int(BACKWARD_FACTOR * activation_bytes(arch, holding, peak_batch, checkpointing=True))
    activations = checkpointed if holding.checkpointing else plain
    overhead = int(overhead_mib * MIB) if holding.device == "cpu" else 0
    fp32_base = 4 * size.base
    nf4 = frozen - 4 * (size.total - size.trainable - size.quantizable) if holding.nf4_block else 0
    # the base is loaded in fp32 on the CPU before it is placed on a GPU, so loading is a CPU-only peak; QLoRA
    # quantizes from the fp32 base
    load = overhead + int(LOAD_FACTOR * fp32_base) + nf4 if holding.device == "cpu" else 0
    train = overhead + frozen + trained + gradients + optimizer + autocast + activations
    # the merge comes after training's model, trainer and free memory are gone (train/lifecycle.py finish,
    # train/host_memory.py) and loads a fresh base (QLoRA's merge quantizes it and dequantizes it again: a second
    # fp32 copy, methods/qlora.py merge)
    bases = 2 if holding.nf4_block else 1
    merge = overhead + bases * fp32_base if holding.merges and holding.device == "cpu" else 0
    return Memory(overhead=overhead, weights=frozen, adapter=trained, gradients=gradients, optimizer=optimizer,
                  autocast_copies=autocast, activations=activations, activations_checkpointed=checkpointed,
                  activations_plain=plain, load_peak=load, train_peak=train, merge_peak=merge,
                  peak=max(load, train, merge))


def measure_import_overhead() -> float:
    """VmRSS in MiB of a fresh Python process once it has imported what `tunelab train` imports before loading a
    model (a subprocess, so that what this process already holds does not count)."""
    import subprocess
    import sys

    code = ("import torch, transformers, peft, trl, datasets; from transformers import Trainer; "
            "import tunelab.train.lifecycle, tunelab.train.trainer, tunelab.tasks.registry\n"
            "print([int(line.split()[1]) for line in open('/proc/self/status') if line.startswith('VmRSS:')][0])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return int(done.stdout.strip().splitlines()[-1]) / 1024


def import_overhead_mib() -> float:
    return IMPORT_OVERHEAD_MIB
