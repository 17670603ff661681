"""train/host_memory.py: what a process freed is given back before the merge, and large blocks freed inside it are
returned at once. Each case runs in a fresh interpreter, whose allocator starts from glibc's defaults."""

import json
import subprocess
import sys

import pytest

from tunelab.train.host_memory import glibc

pytestmark = pytest.mark.skipif(glibc() is None, reason="malloc_trim and mallopt are glibc's; this C library is not")

# Freeing an 8 MiB mapped block raises glibc's mmap threshold to 8 MiB, as a training run's large frees do: smaller
# blocks then come from the heap, and glibc keeps what is freed there.
SCRIPT = r"""
import ctypes, json, sys
from contextlib import nullcontext
from tunelab.train.host_memory import handed_back
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]

def rss():
    return [int(line.split()[1]) // 1024 for line in open("/proc/self/status") if line.startswith("VmRSS:")][0]

def block(size):
    pointer = libc.malloc(size)
    ctypes.memset(pointer, 1, size)
    return pointer

libc.free(block(8 << 20))
figures = {}
if sys.argv[1] == "trim":  # 99 blocks freed under a last one that pins the heap's top: glibc keeps them
    blocks = [block(4 << 20) for _ in range(100)]
    for pointer in blocks[:-1]:
        libc.free(pointer)
    figures["kept"] = rss()
    with handed_back() as done:
        figures["inside"], figures["done"] = rss(), done
else:  # one 4 MiB block allocated and freed, plainly or inside handed_back()
    with handed_back() if sys.argv[1] == "inside" else nullcontext():
        before = rss()
        pointer = block(4 << 20)
        figures["holding"] = rss() - before
        libc.free(pointer)
        figures["after_free"] = rss() - before
print(json.dumps(figures))
"""


def run(case: str) -> dict:
    done = subprocess.run([sys.executable, "-c", SCRIPT, case], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def test_memory_freed_before_the_merge_is_given_back():
    figures = run("trim")
    assert figures["done"] is True
    assert figures["kept"] - figures["inside"] > 300  # MiB, of the 396 freed on the heap


def test_large_blocks_freed_while_merging_are_returned_at_once():
    plain, inside = run("plain"), run("inside")
    assert plain["holding"] >= 3 and plain["after_free"] >= 3  # kept by the allocator after free
    assert inside["holding"] >= 3 and inside["after_free"] <= 1  # its own mapping, returned when freed
