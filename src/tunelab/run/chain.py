"""Chained runs: a recipe's `model.from_run` starts training from an earlier run's tuned model.

The starting model is the earlier run's tuned model as ONE checkpoint folder, which the new run treats exactly as it
treats any base model (its method wraps it, its evaluation compares with it, serve and export load it):
    merged/   where the earlier run saved a merged model (the default for methods that can merge)
    model/    where it trained the whole model (full fine-tuning): that folder is a checkpoint already
    cache     otherwise (output.merge: false) it is merged once into <home>/models/run-<sha256>/, keyed by the
              earlier run's saved model, as a .gguf file is converted once (models/convert.py); a method that cannot
              merge (prefix, prompt, adapter) is refused
So with an adapter method "the starting model with the adapter disabled" (the reference of DPO and the other
preference tasks) is this checkpoint, held once in memory.

run.json records where the run started (`RunRecord.started_from`): the earlier run, its base model, the checkpoint
and the sha256 of its weight files; `run_base_path` is the one way every later command finds a run's base model, and
a checkpoint that changed since (the earlier run trained again, say) is refused there in one line.

`model.name` of a chained recipe names the base model at the root of the chain: left at its default it is taken from
the earlier run; given, it must be the earlier run's.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tunelab.errors import TunelabError
from tunelab.files import sha256_file
from tunelab.run.folder import RunDir
from tunelab.run.record import RunRecord, StartInfo, open_run

if TYPE_CHECKING:
    from tunelab.config.schema import Recipe
    from tunelab.models.load import ModelRef

WEIGHT_SUFFIXES = (".safetensors", ".bin")


def chained_recipe(recipe: "Recipe", home: Path) -> "Recipe":
    """The recipe with `model.name` set to the earlier run's base model (a chained run's root), checked: the earlier
    run is a completed run with a saved model that writes text, and is not this run's own folder. Reads the earlier
    run's files only (no model is loaded); an unchained recipe comes back as it is."""
    from tunelab.run.models import open_run_models

    source = recipe.model.from_run
    if source is None:
        return recipe
    where = f"model.from_run: {source}"
    if not RunDir(Path(source)).is_run():
        raise TunelabError(f"{where}: not a tunelab run folder (no run.json)")
    if os.path.realpath(source) == os.path.realpath(recipe.output.dir):
        raise TunelabError(f"{where}: is this recipe's own output.dir; a run cannot start from itself")
    _, record = open_run(source)
    if record.status != "completed" or not has_saved_model(RunDir(Path(source))):
        raise TunelabError(f"{where}: the run did not complete (status: {record.status}), so it has no tuned model "
                           "to start from; finish it with --resume first")
    # Every task starts from a causal LM: sft, dpo and the other text tasks train it; reward_model and
    # classification put a fresh head on it. A run whose model carries a head writes no text, so it is no start for
    # any of them (to train a head further, --resume or a longer run is the way).
    inference = open_run_models(source, home, "cpu").inference()
    if not inference.writes_text:
        raise TunelabError(f"{where}: a {record.task} run is no starting model: {inference.instead}; start from a "
                           "run whose model writes text (sft, dpo, ...)")
    earlier_base = record.base_model.name
    if "name" in recipe.model.model_fields_set and not same_base(recipe.model.name, earlier_base):
        raise TunelabError(f"{where}: that run's base model is '{earlier_base}', but model.name says "
                           f"'{recipe.model.name}'; leave model.name out (it is taken from the run) or make them agree")
    model = recipe.model.model_copy(update={"name": earlier_base})
    return recipe.model_copy(update={"model": model})


def has_saved_model(run: RunDir) -> bool:
    return run.model.is_dir() and any(run.model.iterdir())


def same_base(first: str, second: str) -> bool:
    """The same model name, or two spellings of the same checkpoint folder or file."""
    if first == second:
        return True
    return Path(first).expanduser().exists() and os.path.realpath(Path(first).expanduser()) == \
        os.path.realpath(Path(second).expanduser())


def resolve_start(recipe: "Recipe", home: Path, console: Any = None) -> tuple["ModelRef", StartInfo]:
    """The checkpoint a chained recipe (after `chained_recipe`) starts from, merged into the cache where the earlier
    run saved no merged model, and what run.json records of it."""
    from tunelab.methods.registry import get_method
    from tunelab.models.load import ModelRef

    source = recipe.model.from_run
    run, record = open_run(source)
    method = get_method(record.method.name)
    if record.merged and run.merged.is_dir():
        checkpoint = run.merged
    elif not method.is_adapter:
        checkpoint = run.model  # a whole model (full fine-tuning) is a checkpoint as it is
    elif method.merge is None:
        raise TunelabError(f"model.from_run: {source}: method '{method.name}' cannot be merged into the base weights "
                           f"({method.no_merge_reason}), so the run's model cannot be a starting checkpoint")
    else:
        checkpoint = merged_into_cache(run, home, console)
    info = StartInfo(run=str(source), task=record.task, method=record.method.name, base_model=record.base_model.name,
                     checkpoint=str(checkpoint), sha256=weight_digests(checkpoint))
    return ModelRef(record.base_model.name, "run", checkpoint), info


def merged_into_cache(run: RunDir, home: Path, console: Any = None) -> Path:
    """The earlier run's adapter merged into its base, written once into the cache under a name made from the
    sha256 of what the run saved (so a run trained again gets a new folder, never a stale one)."""
    from tunelab.methods.registry import get_method
    from tunelab.run.models import open_run_models

    digest = folder_digest(run.model)
    dest = home / "models" / f"run-{digest[:16]}"
    if (dest / "config.json").is_file():
        return dest
    if console is not None:
        console.print(f"[dim]merging the adapter of {run.root} into its base once, into {dest}[/dim]")
    models = open_run_models(run.root, home, "cpu")
    merged = get_method(models.recipe.method.name).merge(models.inference().load_tuned()).float()
    partial = dest.with_name(dest.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    merged.save_pretrained(str(partial))
    models.tokenizer().save_pretrained(str(partial))
    partial.rename(dest)  # whole or absent: a merge cut short is never taken for a checkpoint
    return dest


def folder_digest(folder: Path) -> str:
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            digest.update(f"{path.relative_to(folder)}\0{sha256_file(path)}\0".encode())
    return digest.hexdigest()


def weight_digests(checkpoint: Path) -> dict[str, str]:
    """sha256 of each weight file of a checkpoint folder (what a later change would alter)."""
    return {path.name: sha256_file(path) for path in sorted(checkpoint.iterdir())
            if path.is_file() and path.name.endswith(WEIGHT_SUFFIXES)}


def check_start(start: StartInfo, where: str) -> Path:
    """The starting checkpoint, as it was when the run trained from it; a folder gone or changed is one line."""
    checkpoint = Path(start.checkpoint)
    if not checkpoint.is_dir():
        raise TunelabError(f"{where}: its starting model {checkpoint} (from run {start.run}) is gone; it cannot be "
                           "loaded without it")
    now = weight_digests(checkpoint)
    if now != start.sha256:
        changed = sorted(name for name in set(now) | set(start.sha256) if now.get(name) != start.sha256.get(name))
        raise TunelabError(f"{where}: its starting model {checkpoint} changed since the run trained from it "
                           f"(sha256 of {', '.join(changed)} differs; was run {start.run} trained again?); "
                           "train this run again to start from the new one")
    return checkpoint


def check_same_start(prior: RunRecord, start: StartInfo | None) -> None:
    """--resume goes on from the same starting weights, or not at all."""
    if prior.started_from is None or start is None:
        return
    if prior.started_from.sha256 != start.sha256:
        raise TunelabError(f"--resume: the starting model from {start.run} changed since the run started (sha256 "
                           "differs); start a new run (--overwrite)")


def recipe_base(recipe: "Recipe", home: Path, console: Any = None) -> tuple["ModelRef", StartInfo | None]:
    """The one answer to "which checkpoint does this recipe train from" (training, `data check`): its model.name,
    or a chained recipe's start (after `chained_recipe`) with what run.json records of it."""
    from tunelab.models.load import resolve_model

    if recipe.model.from_run is not None:
        return resolve_start(recipe, home, console)
    return resolve_model(recipe.model.name, home, console=console), None


def run_base_path(recipe: "Recipe", record: RunRecord, home: Path, where: str) -> Path:
    """The one answer to "where is this run's base model": what its evaluation compares with, `generate --base`
    answers with, serve holds and export merges into. A chained run's is its starting checkpoint (checked against
    the sha256 run.json recorded); any other run's is its recipe's model.name."""
    from tunelab.models.load import resolve_model

    if record.started_from is not None:
        return check_start(record.started_from, where)
    return resolve_model(recipe.model.name, home).path
