"""Keep the libraries' own progress bars, info logs and notices out of tunelab's output (every command that loads
them calls this first; so does a compare-methods worker process)."""

from __future__ import annotations

import logging
import os
import warnings


def errors_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.ERROR


def quiet_libraries() -> None:
    """Keep the libraries' own progress bars and info logs out of tunelab's output."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # A few library loops use tqdm directly (transformers' GGUF reader); tqdm reads TQDM_* at import.
    os.environ.setdefault("TQDM_DISABLE", "1")
    # transformers and peft import torchao (QLoRA's 4-bit backend) where it is installed; its optional GPU kernels
    # fail to load on a CPU machine and torch flags one of its enums, at every start. Neither concerns the user.
    logging.getLogger("torchao").setLevel(logging.ERROR)
    logging.getLogger("torch.utils._pytree").setLevel(logging.ERROR)
    # DeepSpeed (installed for train.distributed: deepspeed) is imported by transformers and says at every start on a
    # machine with no GPU that it chose its CPU accelerator. Its logger is made at import with its own level, so its
    # notices are filtered rather than levelled (a filter stays; addFilter adds the same function once).
    logging.getLogger("DeepSpeed").addFilter(errors_only)
    # Deprecation notices from inside the libraries are for tunelab's developers, not its users.
    warnings.filterwarnings("ignore", category=FutureWarning)
    # The tasks built on TRL's experimental trainers (orpo, simpo) say so in their docstrings; the notice TRL prints
    # at their import says nothing the user can act on.
    warnings.filterwarnings("ignore", message="You are importing from 'trl.experimental'")
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
