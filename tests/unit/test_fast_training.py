"""The speed levers of tunelab's trainer leave the optimization as it is: the same rows per step in the same order
give the loss curve and the weights a plain PyTorch loop gives (fp32, where the comparison can be exact)."""

import random

import pytest
import torch

from tests.tiny import tiny_llama, tiny_tokenizer
from tunelab.data.templates import Encoded
from tunelab.train.label_loss import chunked_cross_entropy
from tunelab.train.row_attention import use_row_attention


def rows(count=24, seed=0):
    """Rows of different lengths, the loss on their second half (a prompt and its answer)."""
    generator = random.Random(seed)
    made = []
    for _ in range(count):
        length = generator.randint(6, 30)
        ids = [generator.randint(3, 60) for _ in range(length)]
        made.append(Encoded(ids, [-100] * (length // 2) + ids[length // 2:]))
    return made


class Recording:
    """The trainer's collator, keeping every batch it makes (the order the Trainer fed them)."""

    def __init__(self, inner):
        self.inner, self.batches = inner, []

    def __call__(self, examples):
        batch = self.inner(examples)
        self.batches.append({key: value.clone() if torch.is_tensor(value) else value for key, value in batch.items()})
        return batch


def lora(model):
    from tunelab.methods.lora import LoraConfig, wrap

    torch.manual_seed(1)
    return wrap(model, LoraConfig(r=4, alpha=8, dropout=0.0, target_modules="all-linear"))


def train_with_tunelab(tmp_path, tokenizer, training_rows, speed, steps=5, grad_accum=1):
    from rich.console import Console

    from tunelab.config.schema import TrainSection
    from tunelab.data.dataset import TokenizedSplit
    from tunelab.data.split import Splits
    from tunelab.device import Placement
    from tunelab.present.progress import RichProgress
    from tunelab.run.folder import RunDir
    from tunelab.tasks.base import TrainerParts
    from tunelab.train.batches import language_model_data
    from tunelab.train.trainer import plain_trainer, training_arguments, training_callbacks

    train = TrainSection(max_steps=steps, batch_size=4, grad_accum=grad_accum, lr=1e-2, scheduler="constant",
                         warmup=0, log_every=1, report_to=[], seed=3)
    tokenized = {"train": TokenizedSplit(rows=training_rows, kept=len(training_rows)), "validation": TokenizedSplit(),
                 "test": TokenizedSplit()}
    data = language_model_data(Splits([]), tokenized, tokenizer.pad_token_id, padding_free=True)
    data.collator = recording = Recording(data.collator)
    run = RunDir(tmp_path)
    arguments = {**training_arguments(train, run, Placement("cpu", "fp32"), False), "save_strategy": "no"}
    callbacks = training_callbacks(train, run, RichProgress(Console(quiet=True)))
    model = lora(tiny_llama(tokenizer, hidden_size=64))
    trainer = plain_trainer(TrainerParts(model, tokenizer, data, arguments, callbacks, speed=speed))
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return losses, recording.batches, trainer.model


def train_plain_loop(tokenizer, batches, grad_accum=1):
    """What a user writes by hand: the model's own loss (all logits, sdpa's block mask), AdamW, clipping."""
    model = lora(tiny_llama(tokenizer, hidden_size=64)).train()
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=1e-2, weight_decay=0.0, fused=True)
    losses = []
    for start in range(0, len(batches), grad_accum):
        group = batches[start:start + grad_accum]
        labels = sum(int((batch["labels"][:, 1:] != -100).sum()) for batch in group)
        total = 0.0
        for batch in group:  # the loss summed over the step's label tokens, divided by their count (as transformers)
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0, :-1]
            loss = torch.nn.functional.cross_entropy(logits, batch["labels"][0, 1:], reduction="sum") / labels
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(total)
    return losses, model


@pytest.mark.parametrize("grad_accum", [1, 2])
def test_levers_give_the_plain_loops_loss_curve_and_weights(tmp_path, grad_accum):
    from tunelab.train.trainer import Speed

    tokenizer = tiny_tokenizer()
    speed = Speed(label_loss=True, row_attention=True)
    losses, batches, trained = train_with_tunelab(tmp_path, tokenizer, rows(), speed, grad_accum=grad_accum)
    batches = batches[:5 * grad_accum]  # the data loader may have made one batch ahead
    assert len(batches) == 5 * grad_accum and all(batch["input_ids"].shape[0] == 1 for batch in batches)
    expected, reference = train_plain_loop(tokenizer, batches, grad_accum)
    assert len(losses) == 5
    assert losses == pytest.approx(expected, rel=1e-4)
    assert losses[-1] < losses[0]  # it learned: the comparison is not between two models that never moved
    for (name, mine), (_, theirs) in zip(trained.named_parameters(), reference.named_parameters()):
        if mine.requires_grad:
            assert torch.allclose(mine, theirs, atol=1e-5), name


def test_the_levers_are_what_the_trainer_uses(tmp_path):
    """With the levers off, the same run trains the same curve (a regression guard on both paths)."""
    from tunelab.train.label_loss import LabelPositionsTrainer
    from tunelab.train.trainer import Speed

    tokenizer = tiny_tokenizer()
    on, _, fast = train_with_tunelab(tmp_path / "on", tokenizer, rows(), Speed(label_loss=True, row_attention=True),
                                     steps=3)
    off, _, plain = train_with_tunelab(tmp_path / "off", tokenizer, rows(), Speed(), steps=3)
    assert on == pytest.approx(off, rel=1e-4)
    assert fast.get_base_model().config._attn_implementation == "tunelab_rows"
    assert plain.get_base_model().config._attn_implementation == "sdpa"
    assert LabelPositionsTrainer.loss_is_scaled_for_ga


def test_row_attention_matches_each_row_alone_and_keeps_gradients():
    tokenizer = tiny_tokenizer()
    model = tiny_llama(tokenizer, hidden_size=64)
    lengths = [5, 9, 3, 7]
    ids = torch.randint(3, 60, (1, sum(lengths)), generator=torch.Generator().manual_seed(0))
    positions = torch.cat([torch.arange(length) for length in lengths])[None]
    alone = torch.cat([model(input_ids=part, use_cache=False).logits
                       for part in ids.split(lengths, dim=1)], dim=1)
    assert use_row_attention(model) == "sdpa"
    packed = model(input_ids=ids, position_ids=positions, use_cache=False).logits
    assert torch.allclose(packed, alone, atol=1e-5)
    packed.sum().backward()
    assert model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0
    # a padded batch (a mask) and a cached decode step go through sdpa as before
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    padded = model(input_ids=ids[:, :10].reshape(2, 5), attention_mask=mask, use_cache=False).logits
    assert torch.isfinite(padded).all()
    generated = model.generate(ids[:, :5], max_new_tokens=3, do_sample=False)
    model.set_attn_implementation("sdpa")
    assert torch.equal(generated, model.generate(ids[:, :5], max_new_tokens=3, do_sample=False))


def test_chunked_cross_entropy_equals_the_whole_one_in_value_and_gradient():
    logits = torch.randn(37, 50, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    whole = torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    (expected,) = torch.autograd.grad(whole, logits)
    chunked = chunked_cross_entropy(logits, targets, chunk_rows=8)
    (got,) = torch.autograd.grad(chunked, logits)
    assert chunked.item() == pytest.approx(whole.item(), rel=1e-6)
    assert torch.allclose(got, expected, atol=1e-6)


def test_bf16_frozen_weights_cast_the_frozen_base_and_keep_the_adapter_fp32():
    from tunelab.train.frozen_weights import hold_frozen_in_bf16

    tokenizer = tiny_tokenizer()
    model = lora(tiny_llama(tokenizer, hidden_size=64))
    frozen = sum(1 for p in model.parameters() if not p.requires_grad)
    assert hold_frozen_in_bf16(model) == frozen
    base = model.get_base_model()
    q = base.model.layers[0].self_attn.q_proj
    assert q.base_layer.weight.dtype == torch.bfloat16 and base.model.embed_tokens.weight.dtype == torch.bfloat16
    assert q.lora_A["default"].weight.dtype == torch.float32  # trained: stays fp32 for the optimizer
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(input_ids=torch.tensor([[5, 6, 7]])).logits
    logits.float().sum().backward()
    assert torch.isfinite(logits).all() and q.lora_B["default"].weight.grad is not None


def test_compiled_layers_train_the_same_curve(tmp_path):
    """train.compile_layers: the decoder layers compiled (fp32, so the same numbers up to fusion's rounding)."""
    from tunelab.train.trainer import Speed

    tokenizer = tiny_tokenizer()
    plain, _, _ = train_with_tunelab(tmp_path / "plain", tokenizer, rows(), Speed(label_loss=True), steps=3)
    compiled, _, model = train_with_tunelab(tmp_path / "compiled", tokenizer, rows(),
                                            Speed(label_loss=True, compile_layers=True), steps=3)
    layer = model.get_base_model().model.layers[0]
    assert getattr(layer, "_compiled_call_impl", None) is not None
    assert compiled == pytest.approx(plain, rel=1e-4)
