"""The risk framework in every evaluation: the registry's order, eval.risks and the objective's max_* bounds, the
gate on each bound (a probe that did not run fails its bound, saying why), eval.json with `risks` round-tripping
(and one written before them still loading), each model's raw results saved and reused, `tunelab eval` re-measuring
with exit codes, the report's "Risks" section and the console's line per risk."""

import dataclasses
import json
import shutil

import pytest
from pydantic import ValidationError

from tests.conftest import reverse_rows, tiny_recipe, write_jsonl
from tests.unit.test_evaluation import cli, error_line, write_recipe
from tunelab.config.schema import ObjectiveSection, Recipe
from tunelab.evaluate.gate import risk_check
from tunelab.risks.base import RiskResult
from tunelab.risks.registry import PROBES
from tunelab.run.folder import RunDir
from tunelab.run.record import Evaluation, read_evaluation


def risk(name="bias", value=0.2, unit="rate"):
    return RiskResult(name=name, measure="m", unit=unit, gate="max_bias_change", base=0.1, tuned=0.3, value=value,
                      interval=(0.05, 0.35), rows=10, details={"axes": {}}, examples=[{"prompt": "x"}])


def test_the_registry_lists_the_four_risks_each_with_its_bound_and_options():
    from tunelab.config.schema import RisksSection
    from tunelab.risks.registry import probe_options

    assert [probe.name for probe in PROBES] == ["robustness", "bias", "privacy", "factual_drift"]
    assert [probe.gate for probe in PROBES] == ["max_robustness_drop", "max_bias_change", "max_memorization",
                                                "max_factual_drift"]
    section = RisksSection()
    assert all(probe_options(section, probe).enabled for probe in PROBES)


def test_a_risk_bound_alone_is_an_objective_and_needs_its_probe():
    for bound in ("max_robustness_drop", "max_bias_change", "max_memorization", "max_factual_drift"):
        assert getattr(ObjectiveSection(metric="loss", **{bound: 0.1}), bound) == 0.1
    with pytest.raises(ValidationError, match="give at least one of"):
        ObjectiveSection(metric="loss")
    with pytest.raises(ValidationError, match="max_bias_change needs eval.risks.enabled"):
        Recipe.model_validate({"data": {"train": "x.jsonl"}, "objective": {"metric": "loss", "max_bias_change": 0.1},
                               "eval": {"risks": {"bias": {"enabled": False}}}})
    with pytest.raises(ValidationError, match="unknown axis 'height'"):
        Recipe.model_validate({"data": {"train": "x.jsonl"}, "eval": {"risks": {"bias": {"axes": ["height"]}}}})
    with pytest.raises(ValidationError, match="terms.role: give two or more members"):
        Recipe.model_validate({"data": {"train": "x.jsonl"},
                               "eval": {"risks": {"bias": {"terms": {"role": [["nurse", "nurses"], ["doctor"]]}}}}})
    with pytest.raises(ValidationError, match="extra"):
        Recipe.model_validate({"data": {"train": "x.jsonl"}, "eval": {"risks": {"robustness": {"typos": 1}}}})


def test_the_gate_bounds_each_risk_and_fails_one_that_did_not_run():
    assert risk_check("max_bias_change", "bias", 0.25, risk(value=0.2), None).ok
    failed = risk_check("max_bias_change", "bias", 0.1, risk(value=0.2), None)
    assert not failed.ok and failed.text == "bias +20.0 pts > max_bias_change +10.0 pts"
    missing = risk_check("max_bias_change", "bias", 0.1, None, "no test prompt contains a term")
    assert not missing.ok and missing.text == "bias was not measured: no test prompt contains a term"
    loss = risk_check("max_robustness_drop", "robustness", 0.05, risk("robustness", 0.01, "loss"), None)
    assert loss.ok and loss.text == "robustness +0.0100 <= max_robustness_drop +0.0500"


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory, tiny_checkpoint):
    """A tiny run trained and evaluated by `tunelab train` with risk bounds; its test prompts hold no demographic
    term, so the bias probe takes the built-in templated prompts."""
    folder = tmp_path_factory.mktemp("risks")
    data = write_jsonl(folder / "reverse.jsonl", reverse_rows(60))
    recipe = tiny_recipe(folder, tiny_checkpoint, data,
                         eval={"bootstrap": 100, "forgetting": {"enabled": False}, "max_new_tokens": 6,
                               "risks": {"robustness": {"every_kind": True, "perturbations": ["typo", "case"]}}})
    recipe["objective"] = {"metric": "exact_match", "max_robustness_drop": 1.0, "max_bias_change": 1.0}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TUNELAB_HOME", str(folder / "home"))
        code, out, err = cli("train", write_recipe(folder, recipe))
    return {"root": folder / "run", "code": code, "out": out, "err": err, "folder": folder}


def test_every_evaluation_measures_the_risks(evaluated):
    assert evaluated["code"] == 0, evaluated["err"]
    root = evaluated["root"]
    report = json.loads((root / "eval.json").read_text())
    measured = list(report["risks"])
    assert measured[:2] == ["robustness", "bias"] and "factual_drift" in measured
    for name in {"privacy", "factual_drift"} - set(measured):  # each probe is measured or says why not
        assert any(note.startswith(f"risk {name} not measured: ") for note in report["notes"]), report["notes"]
    robustness, bias = report["risks"]["robustness"], report["risks"]["bias"]
    assert robustness["rows"] == 2 * report["rows"] and set(robustness["details"]["kinds"]) == {"typo", "case"}
    # no test prompt has a term: the templates fill the budget (bias.rows, 8), each answered as written and swapped
    assert bias["details"]["templates"] == bias["rows"] == 8 and bias["details"]["test_rows"] == 0
    assert "templated" in bias["note"]
    checks = {check["check"]: check for check in report["objective"]["checks"]}
    assert checks["max_bias_change"]["actual"] == bias["value"] and checks["max_robustness_drop"]["ok"]
    for label in ("base", "tuned"):
        saved = json.loads((root / "eval" / f"risks-{label}.json").read_text())
        assert set(saved["probes"]) == set(saved["fingerprints"]) == set(measured)
        assert len(saved["probes"]["bias"]["answers"]) == bias["rows"] + 8
    assert "risk robustness:" in evaluated["out"] and "risk bias:" in evaluated["out"]
    record = json.loads((root / "run.json").read_text())
    assert record["evaluation"]["risks"] == {name: report["risks"][name]["value"] for name in measured}


def test_eval_json_round_trips_and_an_older_one_still_loads(evaluated, tmp_path):
    run = RunDir(evaluated["root"])
    evaluation = read_evaluation(run)
    assert Evaluation.model_validate(json.loads(evaluation.model_dump_json())) == evaluation
    assert isinstance(evaluation.risks["bias"], RiskResult)
    older = tmp_path / "older"
    shutil.copytree(evaluated["root"], older)
    raw = json.loads((older / "eval.json").read_text())
    del raw["risks"]
    (older / "eval.json").write_text(json.dumps(raw))
    assert read_evaluation(RunDir(older)).risks == {}
    from tunelab.present.eval_report import build_report

    assert "No risk probe ran" in build_report(RunDir(older))


def test_the_report_has_the_risks_section(evaluated):
    html = (evaluated["root"] / "report.html").read_text()
    section = html.split(">Risks<")[1]
    assert "max_robustness_drop" in section and "max_bias_change" in section
    assert "typo" in section and "gender" in section


def test_tunelab_eval_measures_again_and_gates_each_bound(evaluated):
    root = evaluated["folder"] / "again"
    shutil.copytree(evaluated["root"], root)
    code, out, err = cli("eval", root, "objective.max_bias_change=-1", "eval.risks.robustness.rows=2",
                         "eval.risks.robustness.every_kind=false")
    assert code == 3 and "max_bias_change -100.0 pts" in error_line(err)
    report = json.loads((root / "eval.json").read_text())
    assert report["risks"]["robustness"]["rows"] == 2
    code, out, err = cli("eval", root, "eval.risks.enabled=false", "objective.max_robustness_drop=null",
                         "objective.max_bias_change=null", "objective.min=0")
    assert code == 0, err
    assert json.loads((root / "eval.json").read_text())["risks"] == {}
    code, _, err = cli("eval", root, "eval.risks.enabled=false", "objective.max_bias_change=0.1")
    assert code == 2 and "needs eval.risks.enabled" in error_line(err)


def test_base_raw_results_are_reused_where_the_fingerprint_matches(evaluated, monkeypatch):
    from tunelab.evaluate.evaluator import earlier_base_outputs, earlier_base_risks, evaluate_run
    from tunelab.run.models import open_run_models
    from tunelab.train.lifecycle import evaluation_recipe

    monkeypatch.setenv("TUNELAB_HOME", str(evaluated["folder"] / "home"))
    root = evaluated["folder"] / "reused"
    shutil.copytree(evaluated["root"], root)
    models = open_run_models(root, evaluated["folder"] / "home", "cpu")
    recipe = evaluation_recipe(models.record.recipe, [], "run.json")
    inference = models.inference()

    def no_base():
        raise AssertionError("the base model was loaded")

    # the base model cannot be loaded: everything of it must come from the earlier evaluation
    models.inference = lambda: dataclasses.replace(inference, load_base=no_base)
    before = json.loads((root / "eval" / "risks-base.json").read_text())
    said = []
    evaluation = evaluate_run(models, recipe, said.append, base_outputs=earlier_base_outputs(models),
                              base_risks=earlier_base_risks(models))
    assert any("outputs are reused" in line for line in said)
    assert json.loads((root / "eval" / "risks-base.json").read_text()) == before
    assert evaluation.risks["bias"].base == read_evaluation(RunDir(evaluated["root"])).risks["bias"].base
    other = evaluation_recipe(models.record.recipe, ["eval.risks.robustness.seed=5"], "run.json")
    with pytest.raises(AssertionError, match="base model was loaded"):  # other rows: the base must answer them
        evaluate_run(models, other, said.append, base_outputs=earlier_base_outputs(models),
                     base_risks=earlier_base_risks(models))


def test_a_risk_is_flagged_above_its_bound_only_when_its_interval_lies_above_zero():
    from types import SimpleNamespace

    from tunelab.evaluate.evaluator import PlannedRisk, summarize_risks
    from tunelab.risks.base import RiskPlan, RiskProbe

    def planned(value, interval):
        result = risk("robustness", value)
        result.interval = interval
        probe = RiskProbe("robustness", "max_robustness_drop", plan=None, run=None,
                          summarize=lambda *args: result.model_copy())
        return PlannedRisk(probe, SimpleNamespace(threshold=0.05), RiskPlan("robustness", 4), "print")

    recipe = Recipe.model_validate({"data": {"train": "x.jsonl"}})
    raw = {"base": {"robustness": {}}, "tuned": {"robustness": {}}}
    flags = [summarize_risks([planned(value, interval)], raw, {"base": None, "tuned": None}, recipe)["robustness"]
             .flagged for value, interval in ((0.3, (0.1, 0.5)), (0.3, (-0.1, 0.7)), (0.01, (0.005, 0.02)))]
    assert flags == [True, False, False]  # above and sure; above but could be chance; sure but under the threshold
