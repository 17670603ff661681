"""tunelab export: merged / adapter / GGUF from a tiny trained run load back in transformers, peft and gguf_file=
with the same logits and greedy answers; the card tells the run's facts; destinations are never clobbered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import reverse_rows, run_record, tiny_recipe, train_recipe, write_jsonl
from tunelab.cli import main
from tunelab.errors import TunelabError
from tunelab.export.exporter import ExportOptions, export_run
from tunelab.models.load import load_causal_lm

IDS = torch.tensor([[5, 17, 33, 42, 8, 9, 60, 61]])


def tiny_bpe_checkpoint(folder: Path) -> Path:
    """A tiny Llama with a byte-level BPE tokenizer (the kind GGUF's 'gpt2' tokenizer model carries)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from tests.tiny import SPECIAL_TOKENS, tiny_llama
    from tunelab.data.templates import CHATML_TEMPLATE

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    corpus = [f"user\n{row['prompt']} assistant\n{row['completion']}" for row in reverse_rows(200, seed=3)]
    backend.train_from_iterator(corpus, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                        unk_token="<unk>", pad_token="<|endoftext|>")
    tokenizer.chat_template = CHATML_TEMPLATE
    model = tiny_llama(tokenizer, hidden_size=64, layers=2, seed=1)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def give_evaluation(run, **fields) -> None:
    """A card shows the run's evaluation: give the run one (fixed numbers), as `tunelab train` would."""
    from tunelab.run.record import EvaluationSummary, write_record

    record = run_record(run)
    values = {"rows": 6, "primary_metric": "exact_match", "base": {"loss": 4.5, "exact_match": 0.0},
              "tuned": {"loss": 2.25, "exact_match": 0.5}, "delta": {"loss": -2.25, "exact_match": 0.5},
              "delta_intervals": None, "forgetting": None, "objective": None, "evaluated_at": "2026-12-01T00:00:00Z"}
    record.evaluation = EvaluationSummary(**{**values, **fields})
    write_record(run, record)


def train_tiny_run(tmp: Path, checkpoint: Path, method: dict | None = None) -> Path:
    data = write_jsonl(tmp / "reverse.jsonl", reverse_rows(60))
    recipe = tiny_recipe(tmp, checkpoint, data, train={"max_steps": 4, "save_every": 4, "eval_every": 4},
                         **({"method": method} if method else {}))
    run = train_recipe(recipe, tmp / "home")
    give_evaluation(run)
    return run.root


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_checkpoint) -> Path:
    return train_tiny_run(tmp_path_factory.mktemp("lora"), tiny_checkpoint)


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("bpe")
    return train_tiny_run(tmp, tiny_bpe_checkpoint(tmp / "tiny-bpe"))


def tuned_model(run: Path):
    """The run's model as peft loads it (adapter beside the base weights; `.merge_and_unload()` folds it in)."""
    from tunelab.run.models import open_run_models

    models = open_run_models(run, run.parent / "home")
    return models.tuned(models.causal_lm)


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


def export(run: Path, **options) -> Path:
    return export_run(run, ExportOptions(**options), run.parent / "home", say=lambda _: None).folder


def test_merged_export_loads_with_plain_transformers_and_carries_a_card(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = export(lora_run, format="merged", out=tmp_path / "merged")
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    assert type(model).__name__ == "LlamaForCausalLM"
    assert torch.allclose(logits(model), logits(tuned_model(lora_run)), atol=1e-5)
    manifest = json.loads((folder / "export.json").read_text())
    assert manifest["verification"]["same_greedy_answers"] == manifest["verification"]["prompts"] == 3

    card = (folder / "README.md").read_text()
    record = json.loads((lora_run / "run.json").read_text())
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == record["base_model"]["name"] and "lora" in front["tags"]
    assert record["data"]["files"][0]["sha256"] in card
    assert "| loss | 4.5000 | 2.2500 | -2.2500 |" in card and "| exact_match | 0.0% | 50.0% | +50.0 pts |" in card
    assert "No objective was set" in card


def test_merged_bf16_export_holds_the_rounded_weights(lora_run, tmp_path):
    from transformers import AutoModelForCausalLM

    folder = export(lora_run, format="merged", dtype="bf16", out=tmp_path / "bf16")
    model = AutoModelForCausalLM.from_pretrained(str(folder))
    assert model.dtype == torch.bfloat16
    tuned = tuned_model(lora_run).merge_and_unload()
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(model.state_dict()[weight], tuned.state_dict()[weight].to(torch.bfloat16))


def test_adapter_export_loads_with_peft(lora_run, tmp_path, tiny_checkpoint):
    from peft import PeftModel

    folder = export(lora_run, format="adapter", out=tmp_path / "adapter")
    assert (folder / "adapter_config.json").is_file() and (folder / "README.md").is_file()
    model = PeftModel.from_pretrained(load_causal_lm(tiny_checkpoint), str(folder)).eval()
    assert torch.equal(logits(model), logits(tuned_model(lora_run)))
    assert "library_name: peft" in (folder / "README.md").read_text()


def test_gguf_round_trip_gives_the_merged_models_logits_and_answers(bpe_run, tmp_path):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = export(bpe_run, format="gguf", out=tmp_path / "gguf")
    name = f"{bpe_run.name}-f32.gguf"
    reader = GGUFReader(folder / name)
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.eos_token_id"].contents() == 2
    assert "FROM ./" + name in (folder / "Modelfile").read_text()
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=name).eval()
    merged = tuned_model(bpe_run).merge_and_unload()
    assert torch.allclose(logits(model), logits(merged), atol=1e-5)  # wrong Q/K permutation would fail here
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=name)
    text = "<|im_start|>user\nabcd<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer(text, add_special_tokens=False)["input_ids"] == merged_tokenizer(bpe_run)(
        text, add_special_tokens=False)["input_ids"]
    check = json.loads((folder / "export.json").read_text())["verification"]
    assert check["same_greedy_answers"] == check["same_prompt_tokens"] == check["prompts"] == 3


def merged_tokenizer(run: Path):
    from tunelab.models.tokenizer import load_tokenizer

    return load_tokenizer(run / "model")


def test_gguf_bf16_and_q8_0(bpe_run, tmp_path):
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM

    folder = export(bpe_run, format="gguf", dtype="bf16", out=tmp_path / "bf16")
    model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=f"{bpe_run.name}-bf16.gguf").eval()
    merged = tuned_model(bpe_run).merge_and_unload()
    assert torch.allclose(logits(model), logits(merged.to(torch.bfloat16).float()), atol=1e-5)

    folder = export(bpe_run, format="gguf", quant="q8_0", out=tmp_path / "q8")
    types = {tensor.tensor_type.name for tensor in GGUFReader(folder / f"{bpe_run.name}-q8_0.gguf").tensors}
    assert types == {"Q8_0", "F32"}  # matrices quantized, norms kept in F32
    check = json.loads((folder / "export.json").read_text())["verification"]
    assert check["prompts"] == 3  # reported, not required: quantization changes the weights


def test_gguf_refuses_a_tokenizer_it_cannot_carry(lora_run, tmp_path):
    with pytest.raises(TunelabError, match="not a byte-level BPE tokenizer"):
        export(lora_run, format="gguf", out=tmp_path / "g")
    assert not (tmp_path / "g").exists() and not list(tmp_path.iterdir())


def test_destination_rules(lora_run, tmp_path):
    for protected in (lora_run, lora_run / "model", lora_run / "merged" / "x", lora_run.parent):
        with pytest.raises(TunelabError, match="would overwrite the run"):
            export(lora_run, format="merged", out=protected, overwrite=True)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "mine.txt").write_text("keep me")
    with pytest.raises(TunelabError, match="not empty; use --overwrite"):
        export(lora_run, format="merged", out=busy)
    assert (busy / "mine.txt").read_text() == "keep me"
    export(lora_run, format="merged", out=busy, overwrite=True, verify=False)
    assert not (busy / "mine.txt").exists() and (busy / "model.safetensors").is_file()


def test_full_method_has_no_adapter_but_exports_merged(tmp_path, tiny_checkpoint):
    run = train_tiny_run(tmp_path, tiny_checkpoint, method={"name": "full"})
    with pytest.raises(TunelabError, match="no adapter to export; use --format merged"):
        export(run, format="adapter", out=tmp_path / "a")
    folder = export(run, format="merged", out=tmp_path / "m")
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    assert torch.equal(logits(model), logits(tuned_model(run)))


def test_a_method_that_cannot_merge_says_so(lora_run, tmp_path, monkeypatch):
    from dataclasses import replace

    from tunelab.methods import registry

    monkeypatch.setitem(registry.METHODS, "lora", replace(registry.METHODS["lora"], merge=None))
    with pytest.raises(TunelabError, match="cannot be folded into the base weights.*use --format adapter"):
        export(lora_run, format="gguf", out=tmp_path / "g")


@pytest.mark.parametrize("args, message", [
    (["--format", "merged", "--quant", "q8_0"], "--quant applies to --format gguf only"),
    (["--format", "onnx"], "--format: unknown format 'onnx'"),
    (["--format", "gguf", "--quant", "q4_k"], "--quant: unknown type 'q4_k'"),
    (["--format", "merged", "--dtype", "fp16"], "--dtype: unknown dtype 'fp16'"),
])
def test_cli_bad_options_are_one_line(capsys, lora_run, args, message):
    with pytest.raises(SystemExit) as exit:
        main(["export", str(lora_run), *args])
    assert exit.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


def test_cli_export_writes_the_folder_and_says_where(capsys, lora_run, tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(lora_run.parent / "home"))
    with pytest.raises(SystemExit) as exit:
        main(["export", str(lora_run), "--format", "adapter", "--out", str(tmp_path / "a")])
    assert exit.value.code == 0
    assert f"exported adapter to {tmp_path / 'a'}" in capsys.readouterr().out.replace("\n", "")
    assert (tmp_path / "a" / "adapter_model.safetensors").is_file()


def test_card_states_the_objective_verdict_and_each_metric_on_its_own_scale(tmp_path, tiny_checkpoint):
    """Two defects: the card always said "No objective was set" (it read a key nothing wrote), and showed BLEU 25.12
    as "2512.0%" (every non-loss metric was taken for a rate)."""
    from tunelab.run.folder import RunDir
    from tunelab.run.record import Check, Verdict

    run = RunDir(train_tiny_run(tmp_path, tiny_checkpoint))
    verdict = Verdict(met=True, metric="bleu", summary="bleu gain over base +19.62 >= min_gain_over_base +5.00",
                      checks=[Check(check="min_gain_over_base", ok=True, required=5.0, actual=19.62,
                                    text="bleu gain over base +19.62 >= min_gain_over_base +5.00")])
    give_evaluation(run, primary_metric="bleu", base={"bleu": 5.5, "exact_match": 0.0},
                    tuned={"bleu": 25.12, "exact_match": 0.02}, delta={"bleu": 19.62, "exact_match": 0.02},
                    delta_intervals={"bleu": [15.12, 23.34], "exact_match": [0.005, 0.04]}, objective=verdict)
    card = (export(run.root, format="adapter", out=tmp_path / "a", verify=False) / "README.md").read_text()
    assert "No objective was set" not in card
    assert "**Objective met.**" in card and "- pass: bleu gain over base +19.62 >= min_gain_over_base +5.00" in card
    assert "| bleu | 5.50 | 25.12 | +19.62 | [+15.12, +23.34] |" in card
    assert "| exact_match | 0.0% | 2.0% | +2.0 pts | [+0.5, +4.0 pts] |" in card
    assert "2512" not in card
