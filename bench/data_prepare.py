"""Data doctor speed on the shared real data sets: rows/s cold (one process, the baseline), cold with
worker processes, and warm (cache hit), all measured in this run with the built-in model's tokenizer.

    python bench/data_prepare.py [--data ../shared/data] [--workers 2]

Prints, per data set, the rows read, kept and rejected, the duplicate and contamination counts, and each
variant's rows/s with its ratio to the one-process cold run.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def data_sets(root: Path) -> dict[str, dict]:
    return {
        "sms_spam": {"train": str(root / "sms_spam" / "SMSSpamCollection"), "file_type": "tsv",
                     "columns": ["label", "text"]},
        "conala": {"train": str(root / "conala" / "conala-train.json"),
                   "test": str(root / "conala" / "conala-test.json"),
                   "fields": {"prompt": ["rewritten_intent", "intent"], "completion": "snippet"}},
    }


def timed(data, tokenizer, stop_ids, context, home):
    from tunelab.data.cache import prepare_data

    started = time.perf_counter()
    prepared = prepare_data(data, tokenizer, stop_ids, context, home, check=True)
    return prepared, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1].parent / "shared" / "data"))
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    args = parser.parse_args()

    import datasets

    datasets.disable_progress_bars()
    from tunelab.cli.data import model_limits
    from tunelab.config.schema import Recipe
    from tunelab.paths import tunelab_home

    root = Path(args.data)
    for name, fields in data_sets(root).items():
        if not Path(fields["train"]).exists():
            print(f"{name}: not found under {root}, skipped")
            continue
        results, stages = {}, {}
        for variant, workers in (("cold-1-process", 1), (f"cold-{args.workers}-processes", args.workers)):
            recipe = Recipe.model_validate({"model": {"name": args.model}, "data": {**fields, "num_proc": workers}})
            tokenizer, stop_ids, context = model_limits(recipe, tunelab_home())
            with tempfile.TemporaryDirectory() as cache_home:
                prepared, seconds = timed(recipe.data, tokenizer, stop_ids, context, Path(cache_home))
                results[variant] = seconds
                stages[variant] = prepared.report["timing"]["seconds"]
                if workers == 1:
                    _, warm = timed(recipe.data, tokenizer, stop_ids, context, Path(cache_home))
                    results["warm-cache-hit"] = warm
                    report = prepared.report
        counts, dup = report["counts"], report["duplicates"]
        print(f"{name}: read {counts['read']:,} = kept {counts['kept']:,} + rejected {counts['rejected']:,}; "
              f"duplicates exact {dup['exact']}, near {dup['near']}, label conflicts {dup['label_conflicts']}, "
              f"across splits {dup['across_splits']}; contamination hits {len(report['contamination']['hits'])}; "
              f"by stage {report['rejected_by_stage']}")
        baseline = counts["read"] / results["cold-1-process"]
        for variant, seconds in results.items():
            rate = counts["read"] / seconds
            parts = ", ".join(f"{stage} {value:.2f}" for stage, value in stages.get(variant, {}).items())
            print(f"  {variant:22s} {seconds:8.3f} s {rate:12,.0f} rows/s  {rate / baseline:8.2f}x cold-1-process"
                  + (f"  (s per stage: {parts})" if parts else ""))


if __name__ == "__main__":
    main()
