"""Training's freed memory given back to the operating system before the merge (glibc's malloc; elsewhere nothing).

Why by hand: PyTorch allocates CPU tensors with the C library's malloc, and neither it nor the libraries tunelab
stands on hand freed memory back. glibc keeps what a process frees for reuse, and over a training run its mmap
threshold rises (glibc raises it to the largest block freed, up to 32 MiB), so most tensors then live in its heaps.
The merge after training (a fresh base loaded; for QLoRA quantized and dequantized again, methods/qlora.py) then grew
by anything from 0.2 to 2.5 GB over what training had left, run to run, on the same recipe (CoNaLa QLoRA, 20
steps: the phase's peak 2.0 to 4.1 GB over 7 runs), and was the run's peak. With training's free memory trimmed and
blocks over 256 KiB mapped on their own (so returned as soon as they are freed) while merging, the merge's peak was
1.56 to 1.72 GB over 4 runs, below training's 2.3 GB.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import Any, Iterator

M_MMAP_THRESHOLD = -3  # mallopt's parameter for the mmap threshold (glibc's malloc.h)
MERGE_THRESHOLD = 256 * 1024  # blocks from this size up get their own mapping while merging
STEADY_THRESHOLD = 32 * 2**20  # glibc's ceiling for its own threshold: where a long run's ends up


def glibc() -> Any | None:
    """The C library, where it is glibc (it has malloc_trim and mallopt's mmap threshold); else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # musl and others name it otherwise, and have neither call
        return None
    return libc if hasattr(libc, "malloc_trim") and hasattr(libc, "mallopt") else None


@contextlib.contextmanager
def handed_back() -> Iterator[bool]:
    """Inside: the memory freed so far given back, large blocks mapped on their own; after: glibc's threshold at
    its ceiling, as after any long run. Yields whether it could (glibc); the rest of the process is unchanged."""
    libc = glibc()
    if libc is None:
        yield False
        return
    libc.malloc_trim(0)
    libc.mallopt(M_MMAP_THRESHOLD, MERGE_THRESHOLD)
    try:
        yield True
    finally:
        libc.mallopt(M_MMAP_THRESHOLD, STEADY_THRESHOLD)
