"""Serve what the worker finished: a thread in the server that looks for succeeded jobs in the jobs database and
loads each one's adapter as `ft:<base>:<suffix>:<job id>`, with no restart (the same path as POST /v1/adapters).
At start it loads every succeeded job's model, so a restarted server serves them again.

Why polling: the worker is another process (it may be on another machine sharing the serve folder), and SQLite
has no notifications; a read of one indexed table a second costs nothing next to a request. A request that names
a job's model before the poller has loaded it loads it on the spot (serve_now)."""

from __future__ import annotations

import threading
from contextlib import closing
from typing import Any, Callable

from tunelab.jobs.db import connect
from tunelab.poller import Poller

INTERVAL_S = 1.0


class FinishedJobs:
    def __init__(self, service: Any, say: Callable[[str], None] = print):
        self.service, self.say = service, say
        self.failed: set[str] = set()  # jobs whose adapter would not load: said once, not retried every second
        self.loading = threading.Lock()  # the poller and a request asking for a just-finished job load it once
        self.poller = Poller("tunelab-finished-jobs", INTERVAL_S, self.load_new, say, "finished jobs")

    def start(self) -> "FinishedJobs":
        self.load_new()  # before the server answers: a restarted server serves its jobs' models at once
        self.poller.start()
        return self

    def close(self) -> None:
        self.poller.close()

    def load_new(self) -> None:
        with closing(connect(self.service.jobs.serve_dir)) as connection:
            rows = connection.execute("SELECT id, fine_tuned_model, run_dir FROM jobs WHERE status = 'succeeded' "
                                      "AND fine_tuned_model IS NOT NULL ORDER BY seq").fetchall()
        for row in rows:
            self.load_once(row)

    def serve_now(self, model_id: str) -> None:
        """A request names a model not served yet: if a job has just finished it (the poller has not seen it yet),
        load it now, so the job's `succeeded` and its model answering come together for the client."""
        with closing(connect(self.service.jobs.serve_dir)) as connection:
            row = connection.execute("SELECT id, fine_tuned_model, run_dir FROM jobs WHERE status = 'succeeded' "
                                     "AND fine_tuned_model = ?", (model_id,)).fetchone()
        if row is not None:
            self.load_once(row)

    def load_once(self, row: Any) -> None:
        with self.loading:
            if row["id"] not in self.failed and self.service.registry.get(row["fine_tuned_model"]) is None:
                self.load(row["id"], row["fine_tuned_model"], row["run_dir"])

    def load(self, job_id: str, model_id: str, run_dir: str) -> None:
        from tunelab.serve.registry import open_adapter

        service = self.service
        try:
            served = open_adapter(run_dir, model_id, service.registry.base, service.base_ref,
                                  service.registry.adapter_name(), service.home)
            service.engine.load_adapter(served.adapter, served.folder, served.mixable).result()
            service.registry.add(served)
            self.say(f"serving {model_id} (job {job_id})")
        except Exception as error:
            self.failed.add(job_id)
            self.say(f"job {job_id}: its model {model_id} could not be served: {error}")
