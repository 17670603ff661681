"""Convert a GGUF file once into an ordinary safetensors checkpoint folder, verified, with a manifest.

transformers reads GGUF (dequantizing every tensor), which takes seconds; the converted folder then loads in well
under a second. The manifest records the source's and each written file's sha256 and one greedy generation that
the converted checkpoint reproduced exactly.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

from tunelab import __version__
from tunelab.errors import TunelabError
from tunelab.files import read_json, sha256_file, write_json

MANIFEST = "tunelab-model.json"
CHECK_PROMPT = [{"role": "user", "content": "Name three colours."}]
CHECK_TOKENS = 12


def is_converted(folder: Path) -> bool:
    return (folder / MANIFEST).is_file()


def read_manifest(folder: Path) -> dict[str, Any]:
    return read_json(folder / MANIFEST)


def convert_gguf(gguf_path: Path, dest: Path, source: dict[str, Any], console: Any = None) -> Path:
    """Write `dest` (atomically: a half-written folder is never left under that name)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.models.tokenizer import ensure_pad_token

    # A private scratch folder per process: two processes converting at once never write into the same one.
    partial = dest.with_name(f"{dest.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    say(console, f"converting {gguf_path.name} into {dest} (once)")
    started = time.perf_counter()
    folder, name = str(gguf_path.parent), gguf_path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    except Exception as error:  # transformers raises many types for a file it cannot read
        raise TunelabError(f"{gguf_path}: cannot read this GGUF file ({error})") from None
    ensure_pad_token(tokenizer)
    plain = unquantized_copy(quantized)
    plain.config.pad_token_id = plain.generation_config.pad_token_id = tokenizer.pad_token_id
    plain.save_pretrained(str(partial))
    tokenizer.save_pretrained(str(partial))
    expected = greedy_text(quantized, tokenizer)
    del quantized
    reloaded = AutoModelForCausalLM.from_pretrained(str(partial), dtype=torch.float32)
    produced = greedy_text(reloaded, tokenizer)
    if produced != expected:
        raise TunelabError(f"{gguf_path}: the converted checkpoint does not reproduce the GGUF model's output")
    manifest = {
        "tunelab_version": __version__,
        "source": source,
        "files": {p.name: sha256_file(p) for p in sorted(partial.iterdir()) if p.is_file()},
        "check": {"prompt": CHECK_PROMPT, "greedy_text": produced},
        "converted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(partial / MANIFEST, manifest)
    if is_converted(dest):  # another process finished first: keep its copy
        shutil.rmtree(partial)
        return dest
    shutil.rmtree(dest, ignore_errors=True)
    partial.rename(dest)
    say(console, f"converted and verified in {manifest['seconds']} s: {dest}")
    return dest


def unquantized_copy(quantized: Any) -> Any:
    """A plain model with the GGUF model's dequantized weights.

    A GGUF-loaded model is flagged as quantized and refuses `save_pretrained`. Rather than clearing private flags,
    build an ordinary model from the same config (minus its quantization entry) and move the weights over.
    """
    import torch
    from transformers import AutoModelForCausalLM

    config = quantized.config.__class__.from_dict(
        {k: v for k, v in quantized.config.to_dict().items() if k != "quantization_config"}
    )
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(quantized.state_dict(), assign=True, strict=False)
    plain.tie_weights()
    plain.generation_config = quantized.generation_config
    missing = [name for name, tensor in plain.state_dict().items() if tensor.is_meta]
    if missing:
        raise TunelabError(f"GGUF conversion left weights unset: {', '.join(missing[:5])}")
    return plain.eval()


def greedy_text(model: Any, tokenizer: Any) -> str:
    import torch

    ids = tokenizer.apply_chat_template(CHECK_PROMPT, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=CHECK_TOKENS, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(out[0, ids["input_ids"].shape[1] :])


def verify_files(folder: Path) -> list[str]:
    """Names of files whose sha256 no longer matches the manifest (empty when intact)."""
    manifest = read_manifest(folder)
    return [name for name, digest in manifest["files"].items()
            if not (folder / name).is_file() or sha256_file(folder / name) != digest]


def cached_gguf_checkpoint(gguf_path: Path, home: Path, console: Any = None) -> Path:
    """The converted folder for a user's .gguf file, keyed by its content hash."""
    digest = sha256_file(gguf_path)
    dest = home / "models" / f"gguf-{digest[:16]}"
    if not is_converted(dest):
        convert_gguf(gguf_path, dest, {"gguf_file": str(gguf_path), "gguf_sha256": digest}, console=console)
    return dest


def say(console: Any, message: str) -> None:
    if console is not None:
        console.print(f"[dim]{message}[/dim]")
