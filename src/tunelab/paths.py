"""Where tunelab keeps things that outlive a run (model cache)."""

from __future__ import annotations

import os
from pathlib import Path


def tunelab_home(env: dict[str, str] | None = None) -> Path:
    """`$TUNELAB_HOME`, default `~/.cache/tunelab`. Read once at the CLI boundary and passed down."""
    env = os.environ if env is None else env
    return Path(env.get("TUNELAB_HOME") or Path.home() / ".cache" / "tunelab").expanduser()
