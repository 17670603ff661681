"""Where training logs go besides train_log.jsonl (`train.report_to`): TensorBoard, W&B, MLflow.

TensorBoard is on by default and writes event files into the run folder (<run>/tensorboard), through transformers'
own TensorBoardCallback given that folder; W&B and MLflow use transformers' integrations as they are, and only when
asked for and installed (they read their usual WANDB_* / MLFLOW_* settings).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError

# report_to name -> the module that must be importable
PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_trackers(names: list[str]) -> None:
    """Refuse, before training, a tracker that is asked for but not installed."""
    for name in names:
        if importlib.util.find_spec(PACKAGES[name]) is None:
            raise TunelabError(f"train.report_to: '{name}' is not installed; pip install {PACKAGES[name]} or remove "
                               "it from train.report_to")


def integrations(names: list[str]) -> list[str]:
    """The `report_to` of TrainingArguments: the trackers transformers sets up itself (not TensorBoard, see below)."""
    return [name for name in names if name != "tensorboard"]


def tracker_callbacks(names: list[str], log_dir: Path) -> list[Any]:
    if "tensorboard" not in names:
        return []
    from transformers.integrations import TensorBoardCallback

    class RunFolderTensorBoard(TensorBoardCallback):
        """TensorBoardCallback writing to the run folder (by default it picks output_dir/runs/<date>_<host>)."""

        def __init__(self) -> None:
            super().__init__()
            self.logging_dir = str(log_dir)

    return [RunFolderTensorBoard()]
