"""The data doctor on the shared real data sets with the built-in model's tokenizer and template."""

import json

import pytest

from tests.conftest import SHARED_DATA
from tests.unit.test_cli import invoke

pytestmark = pytest.mark.integration

SMS = SHARED_DATA / "sms_spam" / "SMSSpamCollection"
CONALA = SHARED_DATA / "conala"


def needs(path):
    if not path.exists():
        pytest.skip(f"{path} is absent (shared data sets are for tests only)")


def test_sms_spam_duplicates_are_found_and_counts_add_up(capsys, tmp_path, real_home, real_model, monkeypatch):
    needs(SMS)
    monkeypatch.setenv("TUNELAB_HOME", str(real_home))
    code, out, err = invoke(capsys, "data", "check", str(SMS), "data.file_type=tsv", "data.columns=[label,text]",
                            "--out", str(tmp_path / "check"))
    assert code == 0, err
    report = json.loads((tmp_path / "check" / "data_report.json").read_text())
    counts = report["counts"]
    assert counts["read"] == 5574 and counts["read"] == counts["kept"] + counts["rejected"]
    # 5,574 messages hold 5,169 distinct texts: 405 exact copies (a few more once case and spacing are ignored,
    # a few fewer when the copy of a near-duplicate is counted as near).
    assert 395 <= report["duplicates"]["exact"] <= 410 and report["duplicates"]["near"] > 0
    assert report["splits"]["train"]["labels"].keys() == {"ham", "spam"}
    assert report["pii"]["counts"]["phone"] > 100
    assert "duplicates exact" in out


def test_conala_check_lints_the_real_template(tmp_path, real_home, real_model):
    needs(CONALA)
    from tunelab.cli.data import model_limits
    from tunelab.config.schema import Recipe
    from tunelab.data.cache import prepare_data

    recipe = Recipe.model_validate({"data": {
        "train": str(CONALA / "conala-train.json"), "test": str(CONALA / "conala-test.json"),
        "fields": {"prompt": ["rewritten_intent", "intent"], "completion": "snippet"}}})
    tokenizer, stop_ids, context = model_limits(recipe, real_home)
    prepared = prepare_data(recipe.data, tokenizer, stop_ids, context, tmp_path / "home", check=True)
    report = prepared.report
    assert report["problems"] == []
    assert all(check["passed"] for check in report["lint"]["checks"])
    assert report["counts"]["by_file"]["test"]["read"] == 500
    assert report["counts"]["read"] == report["counts"]["kept"] + report["counts"]["rejected"]
    assert report["contamination"]["hits"]  # CoNaLa's test intents do repeat train ones
