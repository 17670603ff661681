"""Train a recipe in a process of its own, for the tests that kill it.

    python -m tests.reliability.child RECIPE.json [--resume] [--kill EVENT:STEP] [--damage FILE]

`--kill save:N` is the fault-injection hook in the checkpoint writer: it runs in the Trainer's on_save before
tunelab's commit callback (which is always last), so the process dies with checkpoint-N written but not committed,
exactly as a kill inside the save would leave it; `--damage FILE` first truncates that file of checkpoint-N to
half, as a write cut short would. `--kill step:N` dies at the end of step N (before that step's checkpoint),
`--kill end:0` once training has ended, before the model is saved. The home is $TUNELAB_HOME.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
from pathlib import Path

from transformers import TrainerCallback


class KillAt(TrainerCallback):
    def __init__(self, event: str, step: int, damage: str | None, checkpoints: Path):
        self.event, self.step, self.damage, self.checkpoints = event, step, damage, checkpoints

    def die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def on_step_end(self, args, state, control, **kwargs):
        if self.event == "step" and state.global_step == self.step:
            self.die()

    def on_save(self, args, state, control, **kwargs):
        if self.event == "save" and state.global_step == self.step:
            if self.damage:
                path = self.checkpoints / f"checkpoint-{self.step}" / self.damage
                path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
            self.die()

    def on_train_end(self, args, state, control, **kwargs):
        if self.event == "end":
            self.die()


def main() -> None:
    from tests.conftest import train_recipe

    parser = argparse.ArgumentParser()
    parser.add_argument("recipe")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--kill")
    parser.add_argument("--damage")
    options = parser.parse_args()
    recipe = json.loads(Path(options.recipe).read_text())
    callbacks = ()
    if options.kill:
        event, step = options.kill.split(":")
        callbacks = (KillAt(event, int(step), options.damage, Path(recipe["output"]["dir"]) / "checkpoints"),)
    train_recipe(recipe, Path(os.environ["TUNELAB_HOME"]), resume=options.resume, callbacks=callbacks)


if __name__ == "__main__":
    main()
