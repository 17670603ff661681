"""Which model ids the server answers to: the base model and the runs whose adapters it holds.

An adapter is accepted when its run trained a LoRA-family adapter (a peft LoRA folder: LoRA, rsLoRA, DoRA, the
adapter of QLoRA) on the same base model the server holds; anything else is refused with a line that says why.
"""

from __future__ import annotations

import itertools
import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.models.load import ModelRef

# A model id travels in URLs (DELETE /v1/adapters/{id}), Prometheus labels and log lines: no '/', bounded length.
# ':' is there for a fine-tuning job's model, ft:<base>:<suffix>:<job id> as OpenAI names it (up to 160 long).
ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,159}")
KEPT_VERSIONS = 2  # versions of a name kept loaded after a promotion replaced them (in-flight requests, rollback)
ID_RULE = "1 to 160 letters, digits, '.', '_', ':' or '-', starting with a letter or digit"


def is_valid_id(text: object) -> bool:
    return isinstance(text, str) and ID_PATTERN.fullmatch(text) is not None


def check_id(text: str, where: str) -> str:
    """`text` if it is a valid model id; else a TunelabError naming `where` (the field or option it came in)."""
    if not is_valid_id(text):
        raise TunelabError(f"{where}: {shown(text)} is not a valid model id ({ID_RULE})")
    return text


def derived_id(name: str) -> str:
    """A valid id made from a folder or file name (what a run or base is called when no name is given): each run of
    other characters becomes '-', and the result is cut to 64 characters."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", name).lstrip("._-")[:64].rstrip("-")
    return cleaned or "model"


def shown(text: str, limit: int = 40) -> str:
    """A client's text quoted in a message, cut short: an error must not echo 6,000 characters back."""
    return repr(text if len(text) <= limit else text[:limit] + "...")


class Incompatible(TunelabError):
    """A readable run whose model cannot join this server (not a LoRA-family adapter, another base model)."""


@dataclass
class ServedModel:
    id: str
    tokenizer: Any
    stop_ids: set[int]
    root: str  # the base model's folder, or the run folder
    adapter: str | None = None  # peft's name for the adapter inside the model; None for the base
    parent: str | None = None  # the base model's id, for adapters
    mixable: bool = True  # peft can batch it with other adapters through `adapter_names`
    folder: str | None = None  # the adapter folder
    version: int | None = None  # the version of a name in service (deploy/versions.py) this is
    created: int = field(default_factory=lambda: int(time.time()))


class Registry:
    """Model ids -> ServedModel; safe to read and change from the server's threads."""

    def __init__(self, base: ServedModel):
        self.base = base
        self._models = {base.id: base}
        self._lock = threading.Lock()
        self._numbers = itertools.count(1)
        # id -> the versions the last promotions replaced, newest first: still loaded, for the requests that looked
        # one up before a switch (they finish on it) and for a rollback that needs no load
        self._previous: dict[str, list[ServedModel]] = {}

    def get(self, model_id: str) -> ServedModel | None:
        with self._lock:
            return self._models.get(model_id)

    def ids(self) -> list[str]:
        with self._lock:
            return list(self._models)

    def all(self) -> list[ServedModel]:
        with self._lock:
            return list(self._models.values())

    def adapter_name(self) -> str:
        """A fresh name for peft (unique for the server's life, so a reloaded id never meets its old self)."""
        return f"adapter{next(self._numbers)}"

    def add(self, model: ServedModel) -> None:
        check_id(model.id, "model id")
        with self._lock:
            if model.id in self._models:
                raise TunelabError(f"model id '{model.id}' is already served; DELETE it first or pick another name")
            self._models[model.id] = model

    def replace(self, model: ServedModel) -> list[ServedModel]:
        """Serve `model` under its id from now on; the one it replaces is kept loaded as a previous version. Returns
        the versions no longer kept (the caller unloads them once their requests are done)."""
        check_id(model.id, "model id")
        with self._lock:
            old = self._models.get(model.id)
            self._models[model.id] = model
            kept = [entry for entry in self._previous.get(model.id, []) if entry is not model]
            if old is not None and old is not model:
                kept.insert(0, old)
            self._previous[model.id] = kept[:KEPT_VERSIONS]
            return kept[KEPT_VERSIONS:]

    def previous(self, model_id: str) -> list[ServedModel]:
        with self._lock:
            return list(self._previous.get(model_id, []))

    def is_live(self, model: ServedModel) -> bool:
        """Whether `model` can still take a request: served now, or a version replaced lately (loaded still)."""
        with self._lock:
            return self._models.get(model.id) is model or any(entry is model
                                                              for entry in self._previous.get(model.id, []))

    def remove(self, model_id: str) -> ServedModel | None:
        with self._lock:
            if model_id == self.base.id:
                raise TunelabError(f"'{model_id}' is the base model; only adapters can be unloaded")
            return self._models.pop(model_id, None)


def base_id(name: str) -> str:
    """The id of a base model: a built-in name as is, a folder or file by its name; a run's model/ or merged/
    folder by the run's name."""
    path = Path(name)
    if len(path.parts) == 1 and path.suffix != ".gguf":
        return derived_id(name)
    if path.name in ("model", "merged") and (path.parent / "run.json").is_file():
        return derived_id(f"{path.parent.name}-{path.name}")
    return derived_id(path.name)


def open_base(name: str, home: Path, placement: Any) -> tuple[Any, ServedModel, ModelRef]:
    from tunelab.data.templates import stop_token_ids
    from tunelab.models.load import load_causal_lm, model_stop_ids, resolve_model
    from tunelab.models.tokenizer import load_tokenizer

    ref = resolve_model(name, home)
    model = placement.place(load_causal_lm(ref.path)).eval()
    tokenizer = load_tokenizer(ref.path)
    served = ServedModel(base_id(name), tokenizer, stop_token_ids(tokenizer, model_stop_ids(model)), str(ref.path))
    return model, served, ref


def open_adapter(run_path: str | Path, model_id: str | None, base: ServedModel, base_ref: ModelRef,
                 adapter_name: str, home: Path, given_as: str | None = None) -> ServedModel:
    """Check that a run's adapter can join the served base, and describe it (nothing is loaded yet). Refusals name
    the run as `given_as` (what the admin typed) when the folder opened is its resolved path."""
    from tunelab.data.templates import stop_token_ids
    from tunelab.run.models import open_run_models

    models = open_run_models(run_path, home, "cpu")  # only its files are read here; the engine loads the adapter
    shown_as = given_as or run_path
    config = lora_adapter(models, shown_as)
    folder = models.run.model
    if not same_model(models.base_path(), base_ref.path):
        raise Incompatible(
            f"{shown_as}: trained on base model '{models.base_name()}', but the server holds "
            f"'{base_ref.name}'; serve it with --base {models.base_name()}"
        )
    check_weights(folder, shown_as)
    tokenizer = models.tokenizer()
    return ServedModel(
        id=check_id(model_id, "name") if model_id else derived_id(models.run.root.resolve().name),
        tokenizer=tokenizer,
        stop_ids=stop_token_ids(tokenizer, sorted(base.stop_ids)),
        root=str(models.run.root),
        adapter=adapter_name,
        parent=base.id,
        mixable=not getattr(config, "use_dora", False),  # peft's mixed batches do not support DoRA
        folder=str(folder),
    )


def lora_adapter(models: Any, shown_as: str | Path) -> Any:
    """The peft config of a run's LoRA-family adapter (LoRA, rsLoRA, DoRA, QLoRA's adapter): what a server can
    hot-swap on its base. Incompatible, saying why, for a run that writes no text or trained something else."""
    from peft import PeftConfig, PeftType

    from tunelab.methods.registry import get_method

    inference = models.inference()
    if not inference.writes_text:
        raise Incompatible(f"{shown_as}: the server answers with text, and {inference.instead}")
    method = get_method(models.recipe.method.name)
    folder = models.run.model
    if not method.is_adapter or not (folder / "adapter_config.json").is_file():
        raise Incompatible(
            f"{shown_as}: method '{method.name}' did not train a peft adapter, so it cannot be hot-swapped; "
            f"serve its model on its own with --base {models.run.merged if models.run.merged.is_dir() else folder}"
        )
    config = PeftConfig.from_pretrained(str(folder))
    if config.peft_type != PeftType.LORA:
        raise Incompatible(
            f"{shown_as}: its {config.peft_type.value} adapter is not LoRA-family; the server hot-swaps LoRA-family "
            "adapters only (export --format merged and serve that with --base)"
        )
    return config


def check_weights(folder: Path, shown_as: str | Path) -> None:
    """Read the adapter's tensors once on the CPU (an adapter is small): a truncated or corrupt file is refused
    here, before the engine has injected any of its layers into the served model."""
    from safetensors.torch import load_file

    weights = folder / "adapter_model.safetensors"
    if not weights.is_file():
        return
    try:
        load_file(str(weights))
    except Exception as error:  # safetensors raises its own error types, OSError and ValueError among them
        raise TunelabError(f"{shown_as}: its adapter weights {weights.name} cannot be read ({error})") from None


def same_model(first: Path, second: Path) -> bool:
    """The same checkpoint folder, or two conversions of the same GGUF file (same source sha256)."""
    from tunelab.models.convert import is_converted, read_manifest

    if os.path.realpath(first) == os.path.realpath(second):
        return True
    if is_converted(first) and is_converted(second):
        digest = [read_manifest(folder).get("source", {}).get("gguf_sha256") for folder in (first, second)]
        return digest[0] is not None and digest[0] == digest[1]
    return False
