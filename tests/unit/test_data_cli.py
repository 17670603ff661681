"""`tunelab data check` and `tunelab data prepare`, then `tunelab train` on the prepared data (tiny model)."""

import json

from tests.conftest import reverse_rows, tiny_recipe, write_jsonl
from tests.unit.test_cli import invoke, one_error_line, write_recipe


def test_check_a_data_file_writes_the_report(capsys, tmp_path, home, tiny_checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = reverse_rows(30)
    path = write_jsonl(tmp_path / "d.jsonl", rows + [rows[3], {"prompt": "x"}])
    code, out, err = invoke(capsys, "data", "check", str(path), "--model", str(tiny_checkpoint),
                            "data.split.test=0.2", "data.bad_rows=quarantine")  # train sets the bad row aside too
    assert code == 0, err
    assert "read = kept + rejected" in out and "duplicates exact 1" in out
    folder = tmp_path / "data_check" / "d"
    report = json.loads((folder / "data_report.json").read_text())
    assert report["counts"]["read"] == 32 and report["counts"]["rejected"] == 2
    html = (folder / "data_report.html").read_text()
    assert "<svg" in html and "<mark>" in html and "Token lengths" in html
    reasons = [json.loads(line)["reason"] for line in (folder / "rejected.jsonl").read_text().splitlines()]
    assert reasons == ["missing field 'completion' (format prompt_completion)",
                       f"duplicate of {path}:4 (same content once case and spacing are ignored)"]
    code, out, _ = invoke(capsys, "data", "check", str(path), "--model", str(tiny_checkpoint), "data.split.test=0.2",
                          "data.bad_rows=quarantine")
    assert code == 0 and "cache hit" in out


def test_check_exits_2_when_nothing_usable_is_left(capsys, tmp_path, home, tiny_checkpoint, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "\xff\xfe", "completion": "a"}\n[1]\n')
    code, out, err = invoke(capsys, "data", "check", str(path), "--model", str(tiny_checkpoint),
                            "data.format=prompt_completion", "data.bad_rows=quarantine")
    assert code == 2
    assert "nothing usable left: all 2 train rows were rejected" in one_error_line(err)
    assert (tmp_path / "data_check" / "bad" / "rejected.jsonl").read_text().count("\n") == 2


def test_prepare_then_train_uses_the_prepared_data(capsys, tmp_path, home, tiny_checkpoint):
    rows = reverse_rows(60)
    data = write_jsonl(tmp_path / "d.jsonl", rows + rows[:5])  # five duplicates to remove
    recipe = tiny_recipe(tmp_path, tiny_checkpoint, data, train={"max_steps": 2, "save_every": 2})
    recipe_path = write_recipe(tmp_path, recipe)
    code, out, err = invoke(capsys, "data", "prepare", str(recipe_path))
    assert code == 0, err
    run_dir = tmp_path / "run"
    prepared = (run_dir / "data" / "train.jsonl").read_text()
    assert (run_dir / "data" / "rejected.jsonl").read_text().count("\n") == 5
    code, out, err = invoke(capsys, "train", str(recipe_path), "--no-eval")
    assert code == 0, err
    assert "data doctor 5 of 65 rows rejected" in out and "prepared data reused (cache hit)" in out
    record = json.loads((run_dir / "run.json").read_text())
    assert record["data"]["doctor"]["from_cache"] is True
    assert record["data"]["doctor"]["counts"]["rejected"] == 5
    assert (run_dir / "data" / "train.jsonl").read_text() == prepared
    assert record["data"]["splits"]["train"]["rows"] == prepared.count("\n")
    code, _, err = invoke(capsys, "data", "prepare", str(recipe_path))
    assert code == 2 and "already holds a run" in one_error_line(err)


def test_prepare_stops_at_a_bad_row_unless_told_to_quarantine(capsys, tmp_path, home, tiny_checkpoint):
    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in reverse_rows(20)) + "not json\n")
    recipe_path = write_recipe(tmp_path, tiny_recipe(tmp_path, tiny_checkpoint, data))
    code, _, err = invoke(capsys, "data", "prepare", str(recipe_path))
    assert code == 2 and f"{data}:21: not valid JSON" in one_error_line(err)
    assert not (tmp_path / "run").exists()
    code, _, err = invoke(capsys, "data", "prepare", str(recipe_path), "data.bad_rows=quarantine")
    assert code == 0, err
    [bad] = [json.loads(line) for line in (tmp_path / "run" / "data" / "rejected.jsonl").read_text().splitlines()]
    assert (bad["line"], bad["stage"], bad["raw"]) == (21, "read", "not json\n")


def test_a_second_prepare_replaces_the_prepared_data(capsys, tmp_path, home, tiny_checkpoint):
    rows = reverse_rows(40)
    data = write_jsonl(tmp_path / "d.jsonl", rows + rows[:3])
    recipe_path = write_recipe(tmp_path, tiny_recipe(tmp_path, tiny_checkpoint, data))
    assert invoke(capsys, "data", "prepare", str(recipe_path))[0] == 0
    marker = json.loads((tmp_path / "run" / "data" / "prepared.json").read_text())
    code, _, err = invoke(capsys, "data", "prepare", str(recipe_path), "data.dedup.exact=false",
                          "data.dedup.near=false", "data.contamination.action=report")
    assert code == 0, err
    assert json.loads((tmp_path / "run" / "data" / "prepared.json").read_text())["key"] != marker["key"]
    assert (tmp_path / "run" / "data" / "rejected.jsonl").read_text() == ""
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["data"]
