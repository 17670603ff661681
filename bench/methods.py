"""The methods trade-off table on a real data set: `tunelab compare-methods` with a fixed, stated budget.

    python bench/methods.py quickstart [--steps 30] [--methods lora,dora,...]
    python bench/methods.py sms-spam   [--steps 60]      # MiniLM-L6 encoder with a head
    python bench/methods.py sms-spam-lm [--steps 40]     # SmolLM2-135M answering ham/spam

Every method gets the same rows, batch size and number of steps, at its own typical learning rate; the base model
is evaluated on the same test rows. The SMS Spam Collection is read as it is: the data doctor removes its exact and
near-duplicate messages and the test rows that overlap train, as in any run.
The table is printed and written to runs/bench-<name>-methods/methods.md (and methods.json).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMS = REPO.parent / "shared" / "data" / "sms_spam" / "SMSSpamCollection"
SETS = {
    "quickstart": ("recipes/quickstart.yaml", ["train.batch_size=4"], 30, 20),
    "sms-spam": ("recipes/sms-spam.yaml", ["train.batch_size=16"], 60, None),
    "sms-spam-lm": ("recipes/sms-spam-lm.yaml", ["train.batch_size=8"], 40, 200),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_set", choices=list(SETS))
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--methods", default="lora,dora,qlora,prefix,prompt,ia3,adapter,full")
    parser.add_argument("--eval-rows", type=int, default=None)
    options = parser.parse_args()
    recipe, overrides, steps, eval_rows = SETS[options.data_set]
    if options.data_set.startswith("sms"):
        if not SMS.is_file():
            sys.exit(f"{SMS} is absent: the SMS benchmark needs ../shared/data")
        overrides = [*overrides, f"data.train={SMS}"]
    command = [sys.executable, "-m", "tunelab", "compare-methods", recipe, *overrides,
               "--methods", options.methods, "--steps", str(options.steps or steps),
               "--out", f"runs/bench-{options.data_set}-methods", "--overwrite"]
    rows = options.eval_rows or eval_rows
    if rows:
        command += ["--eval-rows", str(rows)]
    print(" ".join(command[1:]), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


if __name__ == "__main__":
    main()
