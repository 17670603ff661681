"""A built-in model's checkpoint folder: found (or installed) in its package, a GGUF converted once, then reused."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.files import sha256_file
from tunelab.models.catalog import BuiltinModel
from tunelab.models.convert import convert_gguf, is_converted, say
from tunelab.models.package_files import find_package_path, pip_install_no_deps


def model_dir(model: BuiltinModel, home: Path) -> Path:
    """Where a converted GGUF model lives in the cache."""
    return home / "models" / model.name


def is_ready(model: BuiltinModel, home: Path) -> bool:
    return is_converted(model_dir(model, home)) if model.is_gguf else find_package_file(model) is not None


def provide(model: BuiltinModel, home: Path, console: Any = None, install: bool = True) -> Path:
    """The checkpoint folder of a built-in model, installing its package and converting only the first time."""
    if model.is_gguf and is_converted(model_dir(model, home)):
        return model_dir(model, home)
    found = find_package_file(model)
    if found is None:
        if not install:
            raise TunelabError(f"{model.name}: package {model.package} is not installed")
        say(console, f"installing {model.requirement} (carries {model.file})")
        pip_install_no_deps(model.name, model.requirement)
        found = find_package_file(model)
        if found is None:
            raise TunelabError(f"{model.name}: {model.package} installed but {model.file} is not in it")
    if not model.is_gguf:
        return found
    digest = sha256_file(found)
    if digest != model.sha256:
        raise TunelabError(f"{found}: sha256 {digest[:16]}… differs from the expected {model.sha256[:16]}…")
    source = {"package": model.requirement, "gguf_file": model.file, "gguf_sha256": digest, "license": model.license}
    return convert_gguf(found, model_dir(model, home), source, console=console)


def find_package_file(model: BuiltinModel) -> Path | None:
    return find_package_path(model.module, model.file, marker=None if model.is_gguf else "config.json")
