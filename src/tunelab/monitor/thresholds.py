"""The scores monitoring computes, their default thresholds, and the thresholds a user gives (recipe `monitor:`,
`tunelab serve --monitor-threshold NAME=VALUE`, `tunelab monitor --threshold NAME=VALUE`).

Kept apart from drift.py and quality.py (which import numpy and friends) so the recipe schema can check names
without importing them. Why each default is what it is: see drift.py and quality.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from tunelab.errors import TunelabError

# Drift scores are flagged above their threshold. The drift values are excesses over, or shares calibrated on,
# held-out training rows (drift.py), so the same threshold holds for any data set.
DRIFT_THRESHOLDS: dict[str, float] = {
    "length_distance": 0.35,
    "ngram_distance": 0.1,
    "novel_share": 0.3,
    "format_share": 0.2,
    "language_share": 0.2,
    "embedding_distance": 0.15,
}
# Quality rates: thumbs_up_rate is flagged below its threshold, the others above; answer_length is flagged below
# this fraction of the previous window's mean (quality.py).
QUALITY_THRESHOLDS: dict[str, float] = {
    "thumbs_up_rate": 0.6,
    "correction_rate": 0.25,
    "error_rate": 0.05,
    "refusal_rate": 0.1,
    "answer_length": 0.5,
}
DEFAULT_THRESHOLDS = {**DRIFT_THRESHOLDS, **QUALITY_THRESHOLDS}
MIN_LIVE = 20  # fewer live inputs (or feedback, or requests) than this: a score is shown but never flagged


def check_names(thresholds: dict[str, float], where: str) -> dict[str, float]:
    unknown = sorted(set(thresholds) - set(DEFAULT_THRESHOLDS))
    if unknown:
        raise TunelabError(f"{where}: unknown score '{unknown[0]}' (scores: {', '.join(DEFAULT_THRESHOLDS)})")
    return dict(thresholds)


def parse_threshold_options(options: list[str], option: str) -> dict[str, float]:
    """['novel_share=0.5', ...] -> {'novel_share': 0.5}."""
    parsed = {}
    for text in options:
        name, sep, value = text.partition("=")
        try:
            parsed[name.strip()] = float(value)
        except ValueError:
            sep = ""
        if not sep:
            raise TunelabError(f"{option} '{text}': give NAME=VALUE, e.g. novel_share=0.4")
    return check_names(parsed, option)


def merged_thresholds(*layers: dict[str, float] | None) -> dict[str, float]:
    """The defaults, overridden by each layer in turn (recipe, then the command line)."""
    merged = dict(DEFAULT_THRESHOLDS)
    for layer in layers:
        merged.update(layer or {})
    return merged


def recipe_monitor(run_root: str | Path | None) -> Any:
    """The `monitor:` section of a run's saved recipe (config.schema.MonitorSection); the defaults where the run
    has none (the base model, an older run, an unreadable recipe: monitoring must not stop on it)."""
    import yaml

    from tunelab.config.schema import MonitorSection
    from tunelab.run.folder import RunDir

    path = RunDir(Path(run_root)).recipe_path if run_root else None
    try:
        section = (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).get("monitor") if path else None
        return MonitorSection.model_validate(section or {})
    except (OSError, ValueError, AttributeError, TunelabError):
        return MonitorSection()


Thresholds = dict[str, float] | Callable[[str | None], dict[str, float]]


def layered(options: dict[str, float] | None) -> Callable[[str | None], dict[str, float]]:
    """Thresholds per version: the defaults, then the version's recipe (`monitor.thresholds`), then `options`
    (the command line wins over the recipe)."""
    cache: dict[str | None, dict[str, float]] = {}

    def of(version: str | None) -> dict[str, float]:
        if version not in cache:
            cache[version] = merged_thresholds(recipe_monitor(version).thresholds, options)
        return cache[version]

    return of


def for_version(thresholds: Thresholds | None, version: str | None) -> dict[str, float]:
    if callable(thresholds):
        return thresholds(version)
    return merged_thresholds(thresholds)
