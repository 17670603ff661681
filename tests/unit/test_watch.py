"""Scores while serving and from the command line: `tunelab monitor --json`, the watch thread's gauges and its
one line per crossing, thresholds from a run's recipe under the command line's."""

import json
import random
import time

import pytest

from tests.unit.test_drift import SHIFTS, fake_run, log_prompts, support
from tunelab.cli import main
from tunelab.monitor.thresholds import layered
from tunelab.monitor.watch import Watch
from tunelab.serve.metrics import Metrics


@pytest.fixture()
def shifted(tmp_path):
    """A run tuned on English support questions, served French ones for the last minute."""
    rng = random.Random(1)
    run = fake_run(tmp_path, [support(rng) for _ in range(300)])
    serve_dir = tmp_path / "serve"
    log_prompts(serve_dir, run, SHIFTS["french"]([support(rng) for _ in range(40)], rng), time.time())
    return run, serve_dir


def test_monitor_json(shifted, capsys):
    run, serve_dir = shifted
    with pytest.raises(SystemExit) as exit:
        main(["monitor", str(serve_dir), "--json", "--no-embeddings", "--threshold", "length_distance=0.99"])
    assert exit.value.code == 0
    document = json.loads(capsys.readouterr().out)
    assert [item["model"] for item in document["models"]] == ["bot"] and document["window_s"] == 3600
    scores = {(s["kind"], s["name"]): s for s in document["scores"]}
    language = scores["drift", "language_share"]
    assert language["value"] == 1.0 and language["flagged"] and language["version"] == str(run)
    assert scores["drift", "length_distance"]["threshold"] == 0.99 and not scores["drift", "length_distance"]["flagged"]
    assert scores["quality", "error_rate"]["value"] == pytest.approx(1 / 41)


def test_bad_threshold_option_is_one_line(shifted, capsys):
    with pytest.raises(SystemExit) as exit:
        main(["monitor", str(shifted[1]), "--threshold", "novelty=0.5"])
    assert exit.value.code == 2 and "unknown score 'novelty'" in capsys.readouterr().err


def test_recipe_thresholds_under_the_command_line(shifted):
    run, _ = shifted
    (run / "recipe.yaml").write_text("monitor:\n  thresholds:\n    novel_share: 0.9\n    error_rate: 0.5\n")
    assert layered({})(str(run))["novel_share"] == 0.9
    assert layered({"novel_share": 0.2})(str(run))["novel_share"] == 0.2
    assert layered({})(None)["novel_share"] == 0.3  # the base model: the defaults


def test_watch_sets_gauges_and_says_each_crossing_once(shifted):
    run, serve_dir = shifted
    said = []
    metrics = Metrics(lambda: 0)
    watch = Watch(serve_dir, metrics, 3600, 3600, layered({}), None, said.append)
    watch.tick()
    watch.tick()
    text = metrics.render()[0].decode()
    assert 'tunelab_drift_score{model="bot",score="language_share"} 1.0' in text
    assert 'tunelab_score_flagged{model="bot",score="language_share"} 1.0' in text
    assert 'tunelab_score_flagged{model="bot",score="format_share"} 0.0' in text
    assert 'tunelab_quality_score{model="bot",score="error_rate"}' in text
    crossed = [line for line in said if "language_share" in line]
    assert len(crossed) == 1 and "over its threshold 0.2" in crossed[0]  # two ticks, one line
    watch.thresholds = layered({"language_share": 1.0})
    watch.tick()
    assert any("language_share back within its threshold" in line for line in said)
    assert 'tunelab_score_flagged{model="bot",score="language_share"} 0.0' in metrics.render()[0].decode()


def test_watch_thread_survives_errors_and_stops(tmp_path):
    said = []
    watch = Watch(tmp_path / "missing", Metrics(lambda: 0), 3600, 0.01, None, None, said.append).start()
    time.sleep(0.2)
    watch.close()
    assert not watch.poller.thread.is_alive() and said and said[0].startswith("monitor: ")
