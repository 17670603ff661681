"""What the risk probes (eval.risks: robustness, bias) add to an evaluation, as a ratio against the same evaluation
with them turned off, both measured in this run on a copy of a trained run (default: the quick start's).

    .venv/bin/python bench/risk_cost.py [runs/quickstart]
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path


def evaluate(run: Path, overrides: list[str]) -> tuple[float, object]:
    from rich.console import Console

    from tunelab.paths import tunelab_home
    from tunelab.train.lifecycle import evaluate_and_record

    started = time.perf_counter()
    evaluation = evaluate_and_record(run, tunelab_home(), Console(quiet=True), overrides=overrides)
    return time.perf_counter() - started, evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", nargs="?", default="runs/quickstart")
    options = parser.parse_args()
    copy = Path(tempfile.mkdtemp(prefix="tunelab-bench-")) / "run"
    shutil.copytree(options.run, copy, ignore=shutil.ignore_patterns("checkpoints"))
    without, evaluation = evaluate(copy, ["eval.risks.enabled=false"])
    print(f"evaluation without risks: {without:.1f} s ({evaluation.rows} test rows)")
    with_risks, evaluation = evaluate(copy, [])
    rows = ", ".join(f"{name} {risk.rows} rows" for name, risk in evaluation.risks.items())
    print(f"evaluation with risks:    {with_risks:.1f} s ({rows})")
    print(f"ratio with / without: {with_risks / without:.2f}x (+{with_risks - without:.1f} s)")
    for name, risk in evaluation.risks.items():
        print(f"  {name}: {risk.measure}: base {risk.base}, tuned {risk.tuned}, value {risk.value:+.4f}, "
              f"interval {risk.interval}")
    shutil.rmtree(copy.parent)


if __name__ == "__main__":
    main()
