"""A daemon thread that does one thing every few seconds until it is closed: the server's finished-jobs loader, its
names-in-service applier and its drift/quality monitor are each one. An error in a round is said, and the next round
comes as planned: a locked database or a run folder moved away now and then must not stop the thread."""

from __future__ import annotations

import threading
from typing import Callable


class Poller:
    def __init__(self, name: str, interval_s: float, work: Callable[[], object], say: Callable[[str], None],
                 what: str):
        self.interval_s, self.work, self.say, self.what = interval_s, work, say, what
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)

    def start(self) -> "Poller":
        self.thread.start()
        return self

    def close(self, timeout: float = 10) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=timeout)

    def run(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                self.work()
            except Exception as error:  # said, and tried again next round
                self.say(f"{self.what}: {type(error).__name__}: {error}")
