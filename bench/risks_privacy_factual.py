"""The privacy and factual-drift risk probes on a trained run (e.g. runs/quickstart): figures and the time each costs.

    flock /tmp/cpu.lock python bench/risks_privacy_factual.py runs/quickstart [--device cpu] [--rows 40]

Plans from the run's saved splits, runs each probe on the base model, then on the tuned model (one loaded at a
time, as the evaluator does), and summarizes with the run's own test answers (eval/outputs-{base,tuned}.json) for
the PII count. Prints one JSON object: each probe's RiskResult (less long lists) and seconds per step.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    from tunelab.data.formats import Example
    from tunelab.evaluate.outputs import ModelOutputs, load_outputs
    from tunelab.files import read_jsonl
    from tunelab.paths import tunelab_home
    from tunelab.risks import factual, privacy
    from tunelab.risks.base import Bootstrap, RiskContext
    from tunelab.run.models import open_run_models

    parser = argparse.ArgumentParser()
    parser.add_argument("run")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=40)
    args = parser.parse_args()
    root = Path(args.run)
    models = open_run_models(root, tunelab_home(), device=args.device)
    inference = models.inference()
    tokenizer = models.tokenizer()
    splits = {name: [Example.from_json(row) for row in read_jsonl(root / "data" / f"{name}.jsonl")]
              for name in ("train", "test")}
    ctx = RiskContext(recipe=models.recipe, task=None, spec=None, test=splits["test"], train=splits["train"],
                      task_state={}, tokenizer=tokenizer, run_root=root, writes_text=inference.writes_text)
    empty = ModelOutputs(predictions=[], losses=[], answer_tokens=[], speed={})
    outputs = {name: load_outputs(root / "eval" / f"outputs-{name}.json") or empty for name in ("base", "tuned")}
    probes = [(privacy.PROBE, privacy.PrivacyOptions(rows=args.rows)), (factual.PROBE, factual.FactualOptions())]
    seconds: dict[str, dict[str, float]] = {probe.name: {} for probe, _ in probes}
    plans = {}
    for probe, options in probes:
        started = time.perf_counter()
        plans[probe.name] = probe.plan(ctx, options)
        seconds[probe.name]["plan"] = round(time.perf_counter() - started, 2)
    raw: dict[str, dict[str, dict]] = {probe.name: {} for probe, _ in probes}
    for which, load in (("base", inference.load_base), ("tuned", inference.load_tuned)):
        started = time.perf_counter()
        model = load()
        seconds[f"load_{which}"] = round(time.perf_counter() - started, 2)
        for probe, _ in probes:
            started = time.perf_counter()
            raw[probe.name][which] = probe.run(plans[probe.name], model, tokenizer, models.placement)
            seconds[probe.name][f"run_{which}"] = round(time.perf_counter() - started, 2)
        del model
    bootstrap = Bootstrap(models.recipe.eval.bootstrap, models.recipe.eval.confidence, models.recipe.eval.seed)
    results = {}
    for probe, options in probes:
        started = time.perf_counter()
        result = probe.summarize(plans[probe.name], raw[probe.name]["base"], raw[probe.name]["tuned"],
                                 outputs["base"], outputs["tuned"], options, bootstrap)
        seconds[probe.name]["summarize"] = round(time.perf_counter() - started, 2)
        results[probe.name] = shortened(result.model_dump(mode="json"))
    print(json.dumps({"run": str(root), "placement": models.placement.describe(), "seconds": seconds,
                      "results": results}, indent=1))


def shortened(result: dict) -> dict:
    """The result with per-canary loss lists and long example lists cut for printing."""
    result["examples"] = result["examples"][:4]
    canaries = result["details"].get("canaries", {})
    for item in canaries.get("listed", []):
        item.pop("tuned_continuation", None)
    return result


if __name__ == "__main__":
    main()
