"""`tunelab export`: a finished run into a folder another tool loads, checked after writing, with a model card.

Formats:
    merged   the training folded into the base weights; a plain checkpoint (AutoModelForCausalLM.from_pretrained)
    adapter  the method's own folder as training saved it (PEFT's format for peft methods: PeftModel.from_pretrained)
    gguf     one .gguf file (llama.cpp, Ollama; transformers reads it with gguf_file=) plus an Ollama Modelfile
The method decides what can be merged (Method.merge); nothing here branches on a method's name.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from tunelab.device import Placement
from tunelab.errors import TunelabError
from tunelab.evaluate.steps import Progress, Steps
from tunelab.export.destination import check_destination, default_destination, move_into_place, scratch_folder
from tunelab.files import sha256_file, write_json, write_text_atomic
from tunelab.methods.registry import get_method
from tunelab.run.models import RunModels, open_run_models

FORMATS = ("merged", "adapter", "gguf")
DTYPES = ("f32", "bf16")
CHECK_PROMPTS = 3
CHECK_TOKENS = 32
CHECK_CLASS_ROWS = 32  # a class costs one forward pass: more rows than greedy answers are checked


@dataclass
class ExportOptions:
    format: str
    dtype: str | None = None  # None: f32 for merged and gguf, as trained for adapter
    quant: str | None = None
    out: Path | None = None
    overwrite: bool = False
    verify: bool = True

    @property
    def label(self) -> str:
        precision = self.quant or self.dtype
        return f"{self.format}-{precision}" if precision else self.format


@dataclass
class Exported:
    folder: Path
    manifest: dict[str, Any] = field(default_factory=dict)


def check_options(options: ExportOptions) -> None:
    from tunelab.export.gguf import QUANT_TYPES

    if options.format not in FORMATS:
        raise TunelabError(f"--format: unknown format '{options.format}' (choose from {', '.join(FORMATS)})")
    if options.dtype is not None and options.dtype not in DTYPES:
        raise TunelabError(f"--dtype: unknown dtype '{options.dtype}' (choose from {', '.join(DTYPES)})")
    if options.quant is not None:
        if options.format != "gguf":
            raise TunelabError("--quant applies to --format gguf only")
        if options.quant not in QUANT_TYPES:
            raise TunelabError(f"--quant: unknown type '{options.quant}' (choose from {', '.join(QUANT_TYPES)})")


def export_run(run_root: str | Path, options: ExportOptions, home: Path,
               say: Callable[[str], None] = print, device: str = "auto",
               progress: Progress | None = None) -> Exported:
    """Export; `progress(stage, done, total)` hears of each step the exporter says (then the card)."""
    check_options(options)
    if options.dtype is None and options.format != "adapter":  # merged and GGUF weights default to float32
        options = replace(options, dtype="f32")
    models = open_run_models(run_root, home, device)
    dest = Path(options.out) if options.out else default_destination(models.run, options.label)
    check_destination(dest, models.run, options.overwrite)
    partial = scratch_folder(dest)
    steps = Steps(progress, "export")
    say = step_lines(say, steps)
    try:
        manifest = EXPORTERS[options.format](models, partial, options, say)
        steps.begin("the model card and export.json")
        manifest.update(format=options.format, dtype=options.dtype, quant=options.quant, task=models.record.task,
                        run=str(models.run.root), base_model=models.record.base_model.name)
        from tunelab.present.card import model_card

        write_text_atomic(partial / "README.md", model_card(models.record, models.run.root.name, manifest))
        manifest["files"] = {p.name: sha256_file(p) for p in sorted(partial.iterdir()) if p.is_file()}
        write_json(partial / "export.json", manifest)
        move_into_place(partial, dest)
        steps.begin(None)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return Exported(dest, manifest)


def step_lines(say: Callable[[str], None], steps: Steps) -> Callable[[str], None]:
    """The exporter's `say`: each line it says (writing, loading back, the check) also starts a step."""
    def say_and_step(text: str) -> None:
        say(text)
        steps.begin(text.split(" to ")[0])

    return say_and_step


def merged_model(models: RunModels) -> Any:
    """The tuned model as one plain transformers model, in float32."""
    method = get_method(models.recipe.method.name)
    if method.merge is None:
        raise TunelabError(
            f"{models.run.root}: method '{method.name}' cannot be folded into the base weights, so there is no "
            "merged model to export; use --format adapter"
        )
    return method.merge(models.inference().load_tuned()).float().eval()


def rounded(model: Any, dtype: str | None) -> Any:
    """`model` with its weights rounded to `dtype` and computing in float32: what a reader of the export gets."""
    import torch

    return model.to(torch.bfloat16).float() if dtype == "bf16" else model


def torch_dtype(dtype: str | None) -> Any:
    import torch

    return torch.bfloat16 if dtype == "bf16" else torch.float32


def export_merged(models: RunModels, folder: Path, options: ExportOptions, say: Callable[[str], None]) -> dict:
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from tunelab.models.tokenizer import load_tokenizer

    tokenizer = models.tokenizer()
    model = rounded(merged_model(models), options.dtype)
    say(f"writing the merged model ({options.dtype or 'f32'}) to {folder}")
    model.to(torch_dtype(options.dtype)).save_pretrained(str(folder))
    model.float()
    tokenizer.save_pretrained(str(folder))
    manifest: dict[str, Any] = {}
    if options.verify:
        loader = AutoModelForCausalLM if models.inference().writes_text else AutoModelForSequenceClassification
        reloaded = models.placement.place(loader.from_pretrained(str(folder), dtype=torch_dtype(None))).eval()
        manifest["verification"] = verify(models, model, tokenizer, reloaded, load_tokenizer(folder),
                                          "the run's merged model", required=True, say=say)
    return manifest


def export_adapter(models: RunModels, folder: Path, options: ExportOptions, say: Callable[[str], None]) -> dict:
    method = get_method(models.recipe.method.name)
    if not method.is_adapter:
        raise TunelabError(
            f"{models.run.root}: method '{method.name}' trains the model's own weights, so there is no adapter to "
            "export; use --format merged"
        )
    say(f"copying the adapter to {folder}")
    for path in sorted(models.run.model.iterdir()):
        if path.is_file():
            shutil.copy2(path, folder / path.name)
    if options.dtype is not None:
        cast_safetensors(folder, torch_dtype(options.dtype))
    manifest: dict[str, Any] = {"peft_format": (folder / "adapter_config.json").is_file()}
    if options.verify:
        inference = models.inference()
        tuned = inference.load_tuned()
        reloaded = models.placement.place(method.load(inference.load_base, folder)).eval()
        manifest["verification"] = verify(models, tuned, models.tokenizer(), reloaded, models.tokenizer(),
                                          "the run's tuned model", required=options.dtype in (None, "f32"), say=say)
    return manifest


def cast_safetensors(folder: Path, dtype: Any) -> None:
    """Cast the floating-point tensors of every .safetensors file in `folder` (metadata kept)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    for path in sorted(folder.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata()
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        tensors = {name: t.to(dtype) if t.is_floating_point() else t for name, t in tensors.items()}
        save_file(tensors, str(path), metadata=metadata)


def export_gguf(models: RunModels, folder: Path, options: ExportOptions, say: Callable[[str], None]) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.export.gguf import GgufPlan, source_pre_tokenizer, write_gguf

    inference = models.inference()
    if not inference.writes_text:
        raise TunelabError(f"{models.run.root}: --format gguf is for language models that write text; "
                           f"{inference.instead}, or export --format merged")
    plan = GgufPlan(dtype=options.dtype or "f32", quant=options.quant)
    tokenizer = models.tokenizer()
    model = merged_model(models)
    name = f"{models.run.root.name}-{plan.label}.gguf"
    say(f"writing {name} ({plan.label}) to {folder}")
    pre = source_pre_tokenizer(models.base_path())
    counts = write_gguf(model, tokenizer, models.run.model, folder / name, plan, models.run.root.name, pre)
    write_text_atomic(folder / "Modelfile", ollama_modelfile(name, tokenizer))
    manifest: dict[str, Any] = {"file": name, "tensor_types": counts, "pre_tokenizer": pre or "default"}
    if options.verify:
        reference = rounded(model, plan.dtype)
        say(f"loading {name} back with transformers (gguf_file=) to compare greedy answers")
        reloaded = models.placement.place(AutoModelForCausalLM.from_pretrained(
            str(folder), gguf_file=name, dtype=torch_dtype(None))).eval()
        gguf_tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=name)
        manifest["verification"] = verify(models, reference, tokenizer, reloaded, gguf_tokenizer,
                                          f"the run's merged model ({plan.dtype})", required=plan.quant is None,
                                          say=say)
    return manifest


def ollama_modelfile(gguf_name: str, tokenizer: Any) -> str:
    """FROM the file; Ollama takes the chat template from the GGUF metadata. Stop at the end-of-turn token."""
    lines = [f"FROM ./{gguf_name}"]
    if tokenizer.eos_token:
        lines.append(f'PARAMETER stop "{tokenizer.eos_token}"')
    return "\n".join(lines) + "\n"


def verify(models: RunModels, reference: Any, reference_tokenizer: Any, exported: Any, exported_tokenizer: Any,
           against: str, required: bool, say: Callable[[str], None]) -> dict[str, Any]:
    """The export's answers vs the model it came from (greedy answers of a language model, the classes of a
    classifier); a lossless export that differs is an error."""
    from tunelab.data.dataset import read_splits
    from tunelab.export.verify import check_prompts, check_texts, compare_classes, compare_greedy

    test = read_splits(models.run.data).test
    inference = models.inference()
    if inference.writes_text:
        agreement = compare_greedy(reference, reference_tokenizer, exported, exported_tokenizer,
                                   check_prompts(test, CHECK_PROMPTS), CHECK_TOKENS,
                                   # float32: the check asks for identical answers, not ones rounded alike
                                   Placement(models.placement.device, "fp32"))
    else:
        agreement = compare_classes(inference.classify, reference, reference_tokenizer, exported,
                                    exported_tokenizer, check_texts(test, CHECK_CLASS_ROWS))
    result = {**agreement.to_json(), "against": against}
    say(f"check: {agreement.same_answers} of {agreement.prompts} prompts give the same answer as {against}")
    if required and not agreement.identical:
        raise TunelabError(
            f"export check failed: only {agreement.same_answers} of {agreement.prompts} greedy answers "
            f"({agreement.same_prompt_tokens} prompt encodings) match {against}; nothing was written"
        )
    return result


EXPORTERS: dict[str, Callable[[RunModels, Path, ExportOptions, Callable[[str], None]], dict]] = {
    "merged": export_merged,
    "adapter": export_adapter,
    "gguf": export_gguf,
}
