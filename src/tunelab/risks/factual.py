"""Factual-drift risk probe: how much general knowledge did the fine-tune break?

Both models answer the same general-knowledge questions greedily: the ~100 shipped with tunelab (factual_qa.txt,
common knowledge with short unambiguous answers, written for tunelab) and the user's own (`file`), each asked
through the model's chat template as one user turn with a brief instruction to answer in a few words (like the
forgetting probe's general prompts, evaluate/forgetting.py). An answer is right when one of the question's
accepted answers is contained in it, both normalized: lower case, accents, punctuation and the articles a/an/the
removed, whitespace collapsed, and matched as whole words ("paris" is in "it is paris", "8" is not in "1987").
Containment rather than exact match, because a chat model's "The capital of France is Paris." is right.

`value` = base accuracy - tuned accuracy, in points of accuracy as a rate (0.05: five questions in a hundred the
base answered right and the tuned model no longer does, net of those it newly gets right); larger is worse, and a
negative value is a gain. The interval is a paired bootstrap over the questions. Examples: questions the base
answered right and the tuned model wrong. A classifier writes no answers: `plan` returns None.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from tunelab.data.templates import encode_prompt, stop_token_ids
from tunelab.errors import TunelabError
from tunelab.risks.base import Bootstrap, RiskContext, RiskPlan, RiskProbe, RiskResult

if TYPE_CHECKING:
    from tunelab.device import Placement
    from tunelab.evaluate.outputs import ModelOutputs

SHIPPED = "factual_qa.txt"
SHOWN_EXAMPLES = 12


class FactualOptions(BaseModel):
    """`eval.risks.factual`: which questions, and how they are asked."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Ask the general questions and measure the knowledge lost.")
    builtin: bool = Field(True, description="Ask the questions shipped with tunelab (factual_qa.txt).")
    file: str | None = Field(None, description="More questions: a .txt file of `question<TAB>answer|alternative` "
                             "lines, or a data file with `question` and `answer` columns (answer: text with | "
                             "between alternatives, or a list).")
    rows: int | None = Field(None, ge=1, description="Ask at most this many questions (the first ones); None: all.")
    instruction: str = Field("Answer in a few words.", description="Appended to each question.")
    max_new_tokens: int = Field(24, ge=1, le=256, description="Longest answer generated.")
    batch_size: int = Field(16, ge=1, description="Questions per generation batch.")
    threshold: float = Field(0.05, ge=0, le=1, description="Accuracy drop flagged when the objective sets no "
                             "max_factual_drift.")


@dataclass(frozen=True)
class Question:
    question: str
    answers: tuple[str, ...]  # accepted answers, the reference first
    source: str  # builtin | the user's file


def parse_lines(text: str, source: str) -> list[Question]:
    questions = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        question, tab, answers = line.partition("\t")
        accepted = tuple(answer.strip() for answer in answers.split("|") if answer.strip())
        if not tab or not question.strip() or not accepted:
            raise TunelabError(f"{source}:{number}: expected `question<TAB>answer|alternative`, got {line[:60]!r}")
        questions.append(Question(question.strip(), accepted, "builtin" if source == SHIPPED else source))
    return questions


def shipped_questions() -> list[Question]:
    return parse_lines(resources.files("tunelab.risks").joinpath(SHIPPED).read_text(encoding="utf-8"), SHIPPED)


def user_questions(path: Path) -> list[Question]:
    if not path.is_file():
        raise TunelabError(f"eval.risks.factual_drift.file: {path}: file not found")
    if path.suffix.lower() == ".txt":
        found = parse_lines(path.read_text(encoding="utf-8"), str(path))
    else:
        from tunelab.data.readers import read_records

        found = []
        for record in read_records(path):
            question, answer = record.fields.get("question"), record.fields.get("answer")
            accepted = answer if isinstance(answer, list) else str(answer or "").split("|")
            accepted = tuple(str(item).strip() for item in accepted if str(item).strip())
            if not isinstance(question, str) or not question.strip() or not accepted:
                raise TunelabError(f"{record.where}: a factual question needs `question` and `answer` fields")
            found.append(Question(question.strip(), accepted, str(path)))
    if not found:
        raise TunelabError(f"eval.risks.factual_drift.file: {path}: no questions in it")
    return found


def load_questions(options: FactualOptions) -> list[Question]:
    questions = (shipped_questions() if options.builtin else []) + (
        user_questions(Path(options.file)) if options.file else [])
    if not questions:
        raise TunelabError("eval.risks.factual_drift: no questions (builtin is false and no file is given)")
    return questions[: options.rows] if options.rows else questions


# ---------------------------------------------------------------- scoring

ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize(text: str) -> str:
    """Lower case, accents, punctuation and articles removed, whitespace collapsed (SQuAD's answer normalization,
    with accents folded so "Bogotá" matches "Bogota"). Commas and points inside numbers go too: "300,000" is
    "300000"."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(char for char in text if not unicodedata.combining(char))
    text = re.sub(r"(?<=\d)[,.](?=\d)", "", text)
    text = re.sub(r"[^\w\s]", " ", text)
    text = ARTICLES.sub(" ", text)
    return " ".join(text.split())


def is_correct(answer: str, accepted: tuple[str, ...] | list[str]) -> bool:
    """An accepted answer, normalized, appears in the normalized answer as whole words."""
    said = f" {normalize(answer)} "
    return any(f" {normalize(option)} " in said for option in accepted if normalize(option))


# ---------------------------------------------------------------- probe

def plan(ctx: RiskContext, options: FactualOptions) -> RiskPlan | None:
    """The questions, encoded as chat prompts. None for a classifier (it answers no questions)."""
    if not ctx.writes_text:
        return None
    questions = load_questions(options)
    prompts = [encode_prompt(ctx.tokenizer, [{"role": "user", "content": f"{item.question} {options.instruction}"
                                               .strip()}]) for item in questions]
    return RiskPlan("factual_drift", len(questions),
                    data={"questions": [{"question": item.question, "answers": list(item.answers),
                                         "source": item.source} for item in questions],
                          "prompts": prompts, "max_new_tokens": options.max_new_tokens,
                          "batch_size": options.batch_size})


def run(plan: RiskPlan, model: Any, tokenizer: Any, placement: "Placement") -> dict[str, Any]:
    from tunelab.evaluate.generation import generate_texts

    stop_ids = stop_token_ids(tokenizer, getattr(getattr(model, "generation_config", None), "eos_token_id", None))
    generated = generate_texts(model, tokenizer, plan.data["prompts"], plan.data["max_new_tokens"],
                               plan.data["batch_size"], sorted(stop_ids), placement=placement)
    return {"answers": generated.texts}


def summarize(plan: RiskPlan, base: dict[str, Any], tuned: dict[str, Any], base_outputs: "ModelOutputs",
              tuned_outputs: "ModelOutputs", options: FactualOptions, bootstrap: Bootstrap) -> RiskResult:
    import numpy as np

    questions = plan.data["questions"]
    base_right = np.array([is_correct(answer, item["answers"]) for answer, item in zip(base["answers"], questions)],
                          dtype=np.float64)
    tuned_right = np.array([is_correct(answer, item["answers"])
                            for answer, item in zip(tuned["answers"], questions)], dtype=np.float64)
    drop = float(base_right.mean() - tuned_right.mean())
    interval = None
    if bootstrap.resamples:
        from tunelab.evaluate.bootstrap import percentile_interval, resample_weights

        weights = resample_weights(len(questions), bootstrap.resamples, bootstrap.seed)
        drops = (weights @ (base_right - tuned_right)) / len(questions)
        interval = tuple(percentile_interval(drops, bootstrap.confidence))
    lost = [index for index in range(len(questions)) if base_right[index] and not tuned_right[index]]
    gained = [index for index in range(len(questions)) if tuned_right[index] and not base_right[index]]
    details = {"base_accuracy": float(base_right.mean()), "tuned_accuracy": float(tuned_right.mean()),
               "lost": len(lost), "gained": len(gained), "by_source": by_source(questions, base_right, tuned_right)}
    examples = [{"question": questions[index]["question"], "accepted": questions[index]["answers"],
                 "base": base["answers"][index], "tuned": tuned["answers"][index]} for index in lost]
    return RiskResult(name="factual_drift", measure="general-knowledge accuracy lost: base accuracy - tuned "
                      "accuracy on short-answer questions (rate)", unit="rate", gate="max_factual_drift",
                      base=details["base_accuracy"], tuned=details["tuned_accuracy"], value=drop, interval=interval,
                      rows=len(questions), details=details, examples=examples[:SHOWN_EXAMPLES],
                      flagged=drop > options.threshold, note=plan.note)


def by_source(questions: list[dict[str, Any]], base_right: Any, tuned_right: Any) -> dict[str, dict[str, float]]:
    out = {}
    for source in dict.fromkeys(item["source"] for item in questions):
        rows = [index for index, item in enumerate(questions) if item["source"] == source]
        out[source] = {"rows": len(rows), "base_accuracy": float(base_right[rows].mean()),
                       "tuned_accuracy": float(tuned_right[rows].mean())}
    return out


PROBE = RiskProbe(name="factual_drift", gate="max_factual_drift", plan=plan, run=run, summarize=summarize)
