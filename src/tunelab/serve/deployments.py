"""Names in service, applied: each name (e.g. `support-bot`) answers with the version versions.sqlite says is
serving, and switches with no restart when it changes.

The switch: the new version's adapter is loaded next to the old one, then the registry entry of the name is
replaced in one step under the service's swap lock. A request holds the ServedModel it looked up, so it finishes on
the version it started on; the replaced version stays loaded (registry.KEPT_VERSIONS) for those requests and for a
rollback with no load.

Changes come from this server's admin endpoints (applied before the answer) and from other processes (`tunelab
promote`, `tunelab rollback`, a retrain's gate in the worker): a thread reads the database every second, as
serve/finished_jobs.py does, for the same reason (SQLite has no notifications; the read costs nothing).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, Callable

from tunelab.deploy import versions
from tunelab.errors import TunelabError
from tunelab.poller import Poller
from tunelab.serve.errors import APIError

INTERVAL_S = 1.0


class Deployments:
    def __init__(self, service: Any, say: Callable[[str], None] = print):
        self.service, self.say = service, say
        self.serve_dir = Path(service.settings.serve_dir)
        self.failed: set[tuple[str, int]] = set()  # versions that would not load: said once, not every second
        # the poller and the admin endpoints switch one at a time; an endpoint holds it from the switch to the record,
        # so the poller never sees the new version served while the database still names the old one
        self.applying = threading.RLock()
        self.poller = Poller("tunelab-deployments", INTERVAL_S, self.sync, say, "deployments")

    def start(self) -> "Deployments":
        self.sync()  # before the server answers: each name serves its version from the first request
        self.poller.start()
        return self

    def close(self) -> None:
        self.poller.close()

    def names(self) -> list[str]:
        return versions.names(self.serve_dir)

    def sync(self) -> None:
        """Serve each name's recorded version where it does not already."""
        with self.applying:
            for version in versions.serving(self.serve_dir).values():
                self.apply(version)

    def apply(self, version: versions.Version) -> None:
        served = self.service.registry.get(version.name)
        if serves(served, version):
            return
        if (version.name, version.number) in self.failed:
            return
        try:
            self.switch(version)
        except Exception as error:
            self.failed.add((version.name, version.number))
            kept = f"; it keeps serving v{served.version}" if served is not None and served.version else ""
            self.say(f"{version.label} ({version.run_dir}) could not be served: {error}{kept}")

    def switch(self, version: versions.Version, opened: Any = None) -> None:
        """Serve `version` under its name: a version replaced lately is still loaded; else `opened` (its adapter,
        checked already) or the run's adapter is loaded first."""
        service = self.service
        with self.applying:
            served = service.registry.get(version.name)
            if serves(served, version):
                return
            if served is not None and served.version is None:
                raise TunelabError(f"'{version.name}' is already served as a plain adapter (not a versioned name)")
            ready = next((entry for entry in service.registry.previous(version.name)
                          if entry.root == version.run_dir), None)
            if ready is None:
                ready = opened if opened is not None else self.open(version.run_dir, version.name)
                ready.version = version.number
                service.engine.load_adapter(ready.adapter, ready.folder, ready.mixable).result()
            with service._swap:
                for dropped in service.registry.replace(ready):
                    service.engine.retire(dropped.adapter)
            self.say(f"{version.name} -> v{version.number} ({version.run_dir})")

    def open(self, run_dir: str, name: str) -> Any:
        """The run's adapter described as `name` (checked: LoRA-family, this server's base; nothing loaded yet)."""
        from tunelab.serve.registry import open_adapter

        service = self.service
        return open_adapter(run_dir, name, service.registry.base, service.base_ref, service.registry.adapter_name(),
                            service.home)

    # ---- the admin endpoints and the dashboard --------------------------------------------------------------
    async def promote(self, name: str, which: str, by: str) -> versions.Version:
        """Promote a version of `name`: its number (`3`, `v3`) or a run folder inside --runs-root (recorded as a
        new version when it is not one yet). The switch is done when this returns."""
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(self.promote_now, name, which, by)

    def promote_now(self, name: str, which: str, by: str) -> versions.Version:
        from tunelab.serve.registry import Incompatible, check_id
        from tunelab.serve.runpaths import REFUSED, confined_run

        try:
            check_id(name, "name")
        except TunelabError as error:
            raise APIError(400, str(error), param="name") from None
        self.refuse_plain(name)
        opened = None
        if versions.version_number(which) is not None:
            version = self.known(name, which)
        else:
            try:
                folder = confined_run(which, self.service.settings.runs_roots)
                opened = self.open(str(folder), name)  # refused here, before anything is recorded
            except Incompatible as error:
                raise APIError(400, str(error), param="run") from None
            except Exception:
                raise APIError(400, REFUSED, param="run") from None
            version = versions.record(self.serve_dir, name, folder)
        if version.status == "serving":
            raise APIError(409, f"{version.label} is already in service", param="version")
        with self.applying:
            try:
                self.switch(version, opened)  # first: one that cannot be served is refused before the record changes
            except Exception as error:
                raise APIError(400, f"{version.label} cannot be served: {error}", param="version") from None
            return versions.promote(self.serve_dir, name, version.number, by)

    async def rollback(self, name: str, by: str, reason: str | None = None) -> versions.Version:
        from starlette.concurrency import run_in_threadpool

        return await run_in_threadpool(self.rollback_now, name, by, reason)

    def rollback_now(self, name: str, by: str, reason: str | None = None) -> versions.Version:
        with self.applying:
            try:
                target = versions.rollback_target(self.serve_dir, name)
            except TunelabError as error:
                raise APIError(404 if "not a name" in str(error) else 409, str(error), param="name") from None
            try:
                self.switch(target)
            except Exception as error:
                raise APIError(400, f"{target.label} cannot be served: {error}", param="name") from None
            return versions.promote(self.serve_dir, name, target.number, by, reason, action="rollback")

    def known(self, name: str, which: str) -> versions.Version:
        try:
            return versions.find(self.serve_dir, name, which)
        except TunelabError as error:
            raise APIError(404, str(error), param="version") from None

    def refuse_plain(self, name: str) -> None:
        served = self.service.registry.get(name)
        if served is not None and served.version is None:
            raise APIError(409, f"'{name}' is served as a plain adapter or the base model, not a versioned name; "
                                "pick another name", param="name")

    def is_versioned(self, model_id: str) -> bool:
        served = self.service.registry.get(model_id)
        return served is not None and served.version is not None


def serves(served: Any, version: versions.Version) -> bool:
    """Whether a registry entry is that version of its name."""
    return served is not None and served.version == version.number and served.root == version.run_dir
