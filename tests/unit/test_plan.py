"""`tunelab plan` on tiny models: parameter counts equal the real wrapped model's, the memory terms scale as they
should, the activation count matches what a real forward saves for the backward, `tunelab train` refuses a run that
cannot fit (exit 2, one line naming a remedy, nothing written), and the plan command's output and JSON."""

import json

import pytest
import torch
import yaml

from tests.conftest import tiny_recipe
from tests.tiny import tiny_llama, tiny_tokenizer
from tests.unit.test_cli import invoke, one_error_line
from tunelab.methods.registry import get_method
from tunelab.plan.data_size import Batch, optimizer_steps
from tunelab.plan.memory import Holding, activation_bytes, estimate_memory, layer_bytes_per_token
from tunelab.plan.model_size import model_size

METHOD_OPTIONS = {
    "lora": {"name": "lora", "r": 4, "alpha": 8},
    "qlora": {"name": "qlora", "r": 4, "alpha": 8},
    "full": {"name": "full"},
    "dora": {"name": "dora", "r": 4, "alpha": 8},
    "ia3": {"name": "ia3"},
}


def method_config(name):
    method = get_method(name)
    return method, method.config_class(**METHOD_OPTIONS[name])


@pytest.mark.parametrize("name", list(METHOD_OPTIONS))
def test_parameter_counts_equal_the_real_wrapped_model(tiny_checkpoint, name):
    from tunelab.models.load import load_causal_lm

    method, options = method_config(name)
    planned = model_size(tiny_checkpoint, method, options)
    real = method.wrap(load_causal_lm(tiny_checkpoint), options)
    trainable = sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert planned.trainable == trainable
    if name != "qlora":  # NF4 weights count their packed elements, not the weights they hold
        assert planned.total == sum(p.numel() for p in real.parameters())
    assert planned.base == sum(p.numel() for p in load_causal_lm(tiny_checkpoint).parameters())
    assert planned.trainable < planned.total or name == "full"


def holding(**changes):
    values = dict(compute_bytes=2, frozen_bytes=2, nf4_block=None, stream_bytes=2, norms_train=False,
                  trained_linears=7, lora_rank=16, label_loss=True, row_attention=True, checkpointing=False,
                  merges=False, device="cpu")
    return Holding(**{**values, **changes})


def small_size(tiny_checkpoint, name):
    method, options = method_config(name)
    return model_size(tiny_checkpoint, method, options)


def test_activations_scale_with_the_micro_batch_and_checkpointing_cuts_them(tiny_checkpoint):
    arch = architecture_with_layers(small_size(tiny_checkpoint, "lora").architecture, 30)  # a real model's depth
    four, eight = Batch(4, 400, 200, 400), Batch(8, 800, 400, 800)
    plain4, plain8 = (activation_bytes(arch, holding(), batch, False) for batch in (four, eight))
    assert plain8 == pytest.approx(2 * plain4, rel=0.01)
    assert activation_bytes(arch, holding(), eight, True) < plain8 / 1.5
    # fp32 compute keeps 4-byte activations: more than bf16's
    assert activation_bytes(arch, holding(compute_bytes=4, stream_bytes=4), eight, False) > plain8


def test_weights_shrink_from_full_to_lora_to_qlora(tiny_checkpoint):
    batch = Batch(4, 256, 100, 256)
    full = estimate_memory(small_size(tiny_checkpoint, "full"), holding(norms_train=True, stream_bytes=4,
                                                                        frozen_bytes=4, lora_rank=0), batch)
    lora = estimate_memory(small_size(tiny_checkpoint, "lora"), holding(), batch)
    qlora = estimate_memory(small_size(tiny_checkpoint, "qlora"), holding(nf4_block=64, frozen_bytes=4,
                                                                          stream_bytes=4), batch)
    model_terms = [m.weights + m.adapter + m.gradients + m.optimizer for m in (qlora, lora, full)]
    assert model_terms == sorted(model_terms) and len(set(model_terms)) == 3
    assert full.optimizer == 2 * full.gradients == 2 * full.adapter  # AdamW: two fp32 states per parameter
    assert qlora.train_peak < lora.train_peak + full.optimizer  # a 4-bit base never costs what full training does


def saved_bytes(model, ids, positions, precision):
    """Bytes of the distinct tensors a forward saves for its backward (parameters and NF4 weights apart)."""
    import contextlib

    parameters = set()
    for parameter in model.parameters():
        try:
            parameters.add(parameter.untyped_storage().data_ptr())
        except RuntimeError:  # an NF4 tensor subclass has no plain storage: a weight either way
            pass
    seen = {}

    def pack(tensor):
        try:
            storage = tensor.untyped_storage()
            seen[storage.data_ptr()] = storage.nbytes()
        except RuntimeError:
            pass
        return tensor

    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast:
        model(input_ids=ids, position_ids=positions, use_cache=False)
    return sum(size for pointer, size in seen.items() if pointer not in parameters and pointer)


@pytest.mark.parametrize("name, precision", [("lora", "bf16"), ("lora", "fp32"), ("full", "bf16"),
                                             ("qlora", "bf16")])
def test_the_activation_count_matches_what_a_real_forward_saves(name, precision):
    """A test keeps it so: the per-layer activation bytes the plan counts are the bytes tunelab's training forward
    (its speed levers on) saves for the backward, measured on a model with one and two layers."""
    from tunelab.plan.data_size import make_batch
    from tunelab.plan.model_size import architecture
    from tunelab.train.frozen_weights import hold_frozen_in_bf16
    from tunelab.train.row_attention import use_row_attention
    from tunelab.train.trainer import stop_input_casts

    tokenizer = tiny_tokenizer()
    method, options = get_method(name), get_method(name).config_class(**{**METHOD_OPTIONS[name], "r": 8}
                                                                       if name != "full" else METHOD_OPTIONS[name])
    lengths = [30, 50, 40, 60]
    ids = torch.randint(5, 90, (1, sum(lengths)))
    positions = torch.cat([torch.arange(length) for length in lengths])[None]
    measured = []
    for layers in (1, 2):
        model = method.wrap(tiny_llama(tokenizer, hidden_size=128, layers=layers).train(), options)
        bf16_frozen = name == "lora" and precision == "bf16"
        if bf16_frozen:
            hold_frozen_in_bf16(model)
            stop_input_casts(model)
        use_row_attention(model)
        model.train()
        # autocast's bf16 casts of trained weights are saved too; the plan counts them as their own term
        autocast = 2 * sum(module.weight.numel() for module in model.modules()
                           if isinstance(module, torch.nn.Linear) and module.weight.requires_grad)
        measured.append(saved_bytes(model, ids, positions, precision) - (autocast if precision == "bf16" else 0))
    arch = architecture(model.config)
    c = 2 if precision == "bf16" else 4
    held = holding(compute_bytes=c, stream_bytes=2 if bf16_frozen else 4, frozen_bytes=2 if bf16_frozen else 4,
                   norms_train=name == "full", lora_rank=0 if name == "full" else 8,
                   nf4_block=64 if name == "qlora" else None)
    batch = make_batch(lengths, [0] * len(lengths), padding_free=True)
    one_layer = activation_bytes(arch, held, batch, False) - activation_bytes(
        architecture_with_layers(arch, 1), held, batch, False)
    assert one_layer == pytest.approx(measured[1] - measured[0], rel=0.10)
    assert layer_bytes_per_token(arch, held) > 0


def architecture_with_layers(arch, layers):
    from dataclasses import replace

    return replace(arch, layers=layers)


def test_steps_follow_the_trainer():
    assert optimizer_steps(100, 8, 1, 2, None) == 26  # ceil(100 / 8) = 13 batches per epoch
    assert optimizer_steps(100, 8, 4, 1, None) == 4
    assert optimizer_steps(100, 8, 1, 2, 30) == 30


def write_recipe(tmp_path, recipe):
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def plan_json(capsys, recipe_path, *extra):
    code, out, err = invoke(capsys, "plan", str(recipe_path), "--json", *extra)
    assert code == 0, err
    return json.loads(out)


def test_plan_json_counts_the_prepared_data(capsys, tmp_path, home, tiny_checkpoint, reverse_data):
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data)
    path = write_recipe(tmp_path, recipe)
    plan = plan_json(capsys, path)
    report = json.loads(next((home / "cache" / "data").glob("*/data_report.json")).read_text())
    train = report["splits"]["train"]
    assert plan["data"]["rows"] == train["rows"] - train["dropped_overlong"]
    assert plan["data"]["label_tokens"] == train["label_tokens"]
    assert plan["data"]["tokens"] == train["tokens"]
    assert plan["data"]["steps"] == 6 and plan["method"] == "lora"
    memory = plan["memory"]
    assert memory["peak_mib"] == max(memory["train_peak_mib"], memory["load_peak_mib"], memory["merge_peak_mib"])
    assert plan["parameters"]["trainable"] < plan["parameters"]["total"]
    assert plan["time"] is None
    assert not (tmp_path / "run").exists()  # a plan writes nothing


def test_plan_prints_the_terms_and_a_calibrated_time(capsys, tmp_path, home, tiny_checkpoint, reverse_data):
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, tiny_checkpoint, reverse_data))
    code, out, err = invoke(capsys, "plan", str(path), "--calibrate")
    assert code == 0, err
    for term in ("weights", "gradients", "optimizer state", "activations", "estimated peak", "fits", "tokens/s"):
        assert term in out
    calibrated = plan_json(capsys, path, "--calibrate")["time"]
    assert calibrated["tokens_per_second"] > 0 and calibrated["train_seconds"] > 0
    assert "calibration: 3 steps" in calibrated["source"]
    peak = plan_json(capsys, path, "--peak-gflops", "100")["time"]
    assert peak["train_seconds"] > 0 and "GFLOP/s" in peak["source"]
    assert not (tmp_path / "run").exists()


def test_train_refuses_a_run_that_cannot_fit_and_names_a_remedy(capsys, tmp_path, home, tiny_checkpoint,
                                                                 reverse_data):
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, reverse_data, train={"batch_size": 8})
    path = write_recipe(tmp_path, recipe)
    memory = plan_json(capsys, path)["memory"]
    checkpointed = memory["train_peak_mib"] - memory["activations_mib"] + memory["activations_checkpointed_mib"]
    budget = int((memory["peak_mib"] + checkpointed) / 2 * 2**20)  # between the run and its remedies
    code, _, err = invoke(capsys, "train", str(path), "--memory-budget", str(budget))
    assert code == 2
    line = one_error_line(err)
    assert "more than the" in line and "--memory-budget" in line
    assert "train.gradient_checkpointing=true" in line or "train.batch_size=" in line
    assert not (tmp_path / "run").exists()
    code, _, err = invoke(capsys, "train", str(path), "--memory-budget", "1MiB")
    assert code == 2 and "nothing tunelab can change fits" in one_error_line(err)


def test_a_bad_memory_budget_is_one_line(capsys, tmp_path, home, tiny_checkpoint, reverse_data):
    path = write_recipe(tmp_path, tiny_recipe(tmp_path, tiny_checkpoint, reverse_data))
    code, _, err = invoke(capsys, "plan", str(path), "--memory-budget", "lots")
    assert code == 2 and "--memory-budget: 'lots' is not a size" in one_error_line(err)


def test_a_rounded_padding_free_batch_counts_its_filler_row():
    from tunelab.plan.data_size import make_batch

    assert make_batch([10, 7], [3, 2], True, 16) == Batch(rows=3, tokens=32, label_tokens=5, padded_tokens=45)
    assert make_batch([10, 6], [3, 2], True, 16) == Batch(rows=2, tokens=16, label_tokens=5, padded_tokens=20)
    assert make_batch([10, 7], [3, 2], True, None) == Batch(rows=2, tokens=17, label_tokens=5, padded_tokens=20)
    assert make_batch([10, 7], [3, 2], False, 16).tokens == 20  # padded batches are not rounded here


def test_plan_counts_the_sequences_a_preference_or_rl_row_puts_through_the_model(capsys, tmp_path, home,
                                                                                 tiny_checkpoint):
    from tests.conftest import write_jsonl
    from tests.unit.test_dpo import dpo_recipe, planted_pairs
    from tunelab.models.tokenizer import load_tokenizer
    from tunelab.plan.data_size import Sequences, training_sequences

    pairs = write_jsonl(tmp_path / "pairs.jsonl", planted_pairs(40))
    plan = plan_json(capsys, write_recipe(tmp_path, dpo_recipe(tmp_path, tiny_checkpoint, pairs)))
    assert plan["task"] == "dpo" and plan["data"]["rows"] == 28  # 40 pairs less validation and test
    # each pair is two sequences (chosen, rejected) after its prompt, padded to the longer one
    assert plan["data"]["peak_micro_batch"]["rows"] == 2 * 4

    tokenizer = load_tokenizer(tiny_checkpoint, None)
    from datasets import Dataset

    prompt = [{"role": "user", "content": "abc"}]
    answer = [{"role": "assistant", "content": "cba"}]
    rows = Dataset.from_list([{"prompt": prompt, "chosen": answer, "rejected": [{"role": "assistant",
                                                                                  "content": "zzzzzz"}]}])
    opened = len(tokenizer.apply_chat_template(prompt, tokenize=True, add_generation_prompt=True, return_dict=False))
    pair = training_sequences(rows, tokenizer, {})
    rejected = len(tokenizer("zzzzzz", add_special_tokens=False)["input_ids"]) + 2
    assert pair.per_row == 2 and pair.lengths == [opened + rejected]
    prompts = training_sequences(Dataset.from_list([{"prompt": prompt, "reference": "x"}]), tokenizer,
                                 {"max_new_tokens": 16})
    assert prompts == Sequences([opened + 16], [16], 1)  # a prompt as long as its longest completion


def test_the_time_counts_the_steady_rate_and_what_each_new_batch_shape_costs():
    from dataclasses import replace

    from tunelab.plan.calibrate import scaled
    from tunelab.plan.data_size import Sequences, data_size

    data = data_size(Sequences([100] * 40, [30] * 40), batch_size=4, grad_accum=1, epochs=1, max_steps=10,
                     padding_free=True, seed=0)
    first_pass = [(5.0, 400, 0.2), (2.0, 400, 0.2), (2.0, 400, 0.2), (2.0, 400, 0.2)]  # each timed: a new shape
    # the same batches again: 0.2 s of update each, and 400 tokens in 0.8 s (500 tokens/s)
    second_pass = [(1.5, 400, 0.2), (1.0, 400, 0.2), (1.0, 400, 0.2), (1.0, 400, 0.2)]
    estimate = scaled(first_pass + second_pass, replace(data, shapes=5), "cpu")
    assert estimate.tokens_per_second == pytest.approx(400)
    # first step beyond its update and tokens (5 - 0.2 - 0.8) + 4 more shapes at 1 s each + 10 updates + 4,000
    # tokens at 500/s
    assert estimate.train_seconds == pytest.approx(4.0 + 4 * 1.0 + 10 * 0.2 + 8.0)
    # calibrated on batches half as long, the same run takes as long: the update does not shrink with them
    half = [(seconds - 0.4 * (update > 0), tokens // 2, update) for seconds, tokens, update in first_pass + second_pass]
    assert scaled(half, replace(data, shapes=5), "cpu").train_seconds == pytest.approx(estimate.train_seconds)


def test_rounded_batches_meet_fewer_shapes():
    import random

    from tunelab.plan.data_size import Sequences, data_size

    rng = random.Random(0)
    sequences = Sequences([rng.randint(20, 200) for _ in range(400)], [rng.randint(5, 60) for _ in range(400)])
    plain = data_size(sequences, 8, 1, 1, 150, True, 0, None)
    rounded = data_size(sequences, 8, 1, 1, 150, True, 0, 64)
    assert plain.shapes > 100  # nearly every batch a length of its own
    assert rounded.shapes < 20


def test_tasks_name_the_head_the_plan_sizes():
    from tunelab.tasks.registry import get_task

    assert get_task("reward_model").head_labels({}) == 1  # one score
    assert get_task("classification").head_labels({"style": "head", "labels": ["ham", "spam"]}) == 2
    assert get_task("classification").head_labels({"style": "generate", "labels": ["ham", "spam"]}) is None
    assert get_task("sft").head_labels({}) is None  # the language model's own head over the vocabulary
