"""`tunelab classify`: the class a classification run's model gives to texts."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelab.cli.app import app, quiet_libraries
from tunelab.errors import TunelabError
from tunelab.paths import tunelab_home


@app.command()
def classify(
    run: Path = typer.Argument(..., help="Run folder of a task: classification run."),
    texts: list[str] = typer.Argument(..., help="One or more texts."),
    base: bool = typer.Option(False, "--base", help="Use the run's base model instead."),
) -> None:
    """Print the class of each text (tab-separated: class, text)."""
    quiet_libraries()
    from tunelab.data.formats import with_system
    from tunelab.evaluate.classification import classifier_loaders, predict_by_label_scores, predict_with_head
    from tunelab.inference import open_run_models
    from tunelab.train.classify import user_message

    models = open_run_models(run, tunelab_home())
    info = models.record.get("classification")
    if models.recipe.task != "classification" or not info:
        raise TunelabError(f"{run}: not a classification run; use tunelab generate")
    tokenizer = models.tokenizer()
    model = classifier_loaders(models, info["style"], info["labels"], tokenizer.pad_token_id)["base" if base else
                                                                                             "tuned"]()
    bf16 = models.record.get("precision") == "bf16"
    if info["style"] == "head":
        predictions = predict_with_head(model, tokenizer, texts, info["labels"], models.recipe.data.max_length, 16,
                                        bf16)
    else:
        options, system = models.recipe.classification, models.recipe.data.system_prompt
        prompts = [with_system(system, [{"role": "user", "content": user_message(options, info["labels"], text)}])
                   for text in texts]
        predictions = predict_by_label_scores(model, tokenizer, prompts, info["labels"], 16, bf16)
    for label, text in zip(predictions, texts):
        typer.echo(f"{label}\t{text}")  # plain tab-separated lines, for scripts
