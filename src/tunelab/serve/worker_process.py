"""`tunelab serve --jobs`: the server starts `tunelab worker` as a child process and starts it again if it dies
(a kill -9, out of memory), so a queued job always has a worker. The worker is a process of its own, not a thread,
so training never holds the server's GIL or memory, and a crash in a job cannot take the server down.

The worker waits for the device (--wait-for-device): a worker left running by an earlier server that was killed
finishes its job first. On shutdown the server sends SIGTERM: the worker requeues its job, which goes on from its
last checkpoint the next time a worker runs. If the server dies without a shutdown (kill -9), the kernel stops
the worker too (die_with_parent)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

RESTART_DELAY_S = 2.0


class WorkerProcess:
    def __init__(self, serve_dir: Path, device: str, home: Path, say: Callable[[str], None] = print):
        self.command = [sys.executable, "-m", "tunelab", "worker", "--serve-dir", str(serve_dir), "--device", device,
                        "--wait-for-device"]
        self.environment = {**os.environ, "TUNELAB_HOME": str(home)}
        self.say = say
        self.process: subprocess.Popen | None = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.supervise, name="tunelab-worker-supervisor", daemon=True)

    def start(self) -> "WorkerProcess":
        self.thread.start()
        return self

    def supervise(self) -> None:
        while not self.stopping.is_set():
            self.process = subprocess.Popen(self.command, env=self.environment, stdin=subprocess.DEVNULL,
                                            preexec_fn=die_with_parent)
            code = self.process.wait()
            if self.stopping.is_set():
                return
            self.say(f"the job worker ended (exit {code}); starting it again")
            time.sleep(RESTART_DELAY_S)

    def close(self, timeout: float = 30.0) -> None:
        self.stopping.set()
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
        self.thread.join(timeout=5)


def die_with_parent() -> None:
    """In the child, before it runs: the kernel sends it SIGTERM when the server dies, even by kill -9 (Linux's
    PR_SET_PDEATHSIG), so no worker outlives its server unseen; its job is requeued and goes on from the last
    checkpoint under the next server's worker. Elsewhere the worker waits for the device lock instead."""
    import ctypes
    import signal

    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
