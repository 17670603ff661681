"""`tunelab <command>`: each command is a thin shell around plain functions elsewhere in the package.

Commands live in one module per group (run.py: train/eval/generate/chat/classify, models.py: models, data.py: data
check/prepare ...), each adding itself to `app` when imported below. Heavy libraries (torch, transformers) are
imported inside the commands, so `tunelab --help` answers at once.
"""

from __future__ import annotations

import errno
import os
import sys

from rich.markup import escape

from tunelab.cli import (  # noqa: F401  (each module registers its commands)
    data,
    deploy,
    export,
    feedback,
    jobs,
    methods,
    models,
    monitor,
    plan,
    run,
    runs,
    serve,
    sweep,
)
from tunelab.cli.app import app, error_console
from tunelab.errors import TunelabError


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    debug, argv = take_debug(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tunelab never downloads models at run time
    try:
        app(args=argv, prog_name="tunelab")
    except TunelabError as error:
        if debug:
            raise
        report(str(error))
        sys.exit(error.exit_code)
    except OSError as error:
        if debug or error.errno not in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT):
            raise
        report(f"{error.strerror}: {error.filename or ''}")
        sys.exit(2)
    except KeyboardInterrupt:
        error_console.print("interrupted")
        sys.exit(130)


def take_debug(argv: list[str]) -> tuple[bool, list[str]]:
    """`--debug` wherever it is on the line (before a `--`), and the line without it: typer would take it only
    before the command name, and a user adds it to the end of the command that just failed."""
    end = argv.index("--") if "--" in argv else len(argv)
    debug = "--debug" in argv[:end]
    return debug, [arg for index, arg in enumerate(argv) if index >= end or arg != "--debug"]


def report(message: str) -> None:
    """The one line a user sees for an error they can fix."""
    error_console.print(f"[bold red]error:[/bold red] {escape(message)}", soft_wrap=True)
