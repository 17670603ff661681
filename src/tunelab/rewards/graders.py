"""OpenAI's reinforcement fine-tuning graders, with their names and fields (openai-python `types/graders`), run
locally: `string_check`, `text_similarity`, `python` and `multi` give a score for one answer to one row;
`score_model` asks a model (a reward model run or a judge that writes text), batched over one call's answers: its
fields are here, its models in score_model.py. A `multi` grader combines the row-at-a-time graders only.
`text_similarity`'s `cosine` needs OpenAI's embedding model and `meteor` NLTK's WordNet data, which tunelab cannot
download: both are refused when the recipe is read, not when a row is graded.
"""

from __future__ import annotations

import ast
import math
from typing import Annotated, Any, Callable, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, model_validator

from tunelab.errors import TunelabError
from tunelab.rewards.template import check_template, render

SIMILARITY_METRICS = ("fuzzy_match", "bleu", "gleu", "meteor", "cosine", "rouge_1", "rouge_2", "rouge_3", "rouge_4",
                      "rouge_5", "rouge_l")
UNAVAILABLE = {"cosine": "needs OpenAI's text-embedding-3-large, which a local run cannot call",
               "meteor": "needs NLTK's WordNet data, which tunelab cannot download"}


class GraderBase(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str


class StringCheckGrader(GraderBase):
    type: Literal["string_check"]
    input: str
    reference: str
    operation: Literal["eq", "ne", "like", "ilike"]


class TextSimilarityGrader(GraderBase):
    type: Literal["text_similarity"]
    input: str
    reference: str
    evaluation_metric: Literal[SIMILARITY_METRICS]  # type: ignore[valid-type]
    pass_threshold: float | None = None  # kept as OpenAI has it; the reward is the score itself

    @model_validator(mode="after")
    def available(self) -> "TextSimilarityGrader":
        if self.evaluation_metric in UNAVAILABLE:
            raise ValueError(f"evaluation_metric {self.evaluation_metric} {UNAVAILABLE[self.evaluation_metric]}")
        return self


class PythonGrader(GraderBase):
    type: Literal["python"]
    source: str  # defines grade(sample, item) -> float
    image_tag: str | None = None  # OpenAI's sandbox image; locally the grader runs in this Python


class MultiGrader(GraderBase):
    type: Literal["multi"]
    graders: dict[str, "Grader"]
    calculate_output: str  # a formula over the graders' names, e.g. "0.5 * format + 0.5 * answer"


class TextContent(BaseModel):
    """A text block of a message (OpenAI's input_text / output_text); images and audio a local model cannot read."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["input_text", "output_text"]
    text: str


class ScoreModelMessage(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant", "system", "developer"]
    content: str | TextContent | list[TextContent]  # may hold {{ item.x }} / {{ sample.output_text }}
    type: Literal["message"] | None = None

    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        blocks = [self.content] if isinstance(self.content, TextContent) else self.content
        return "".join(block.text for block in blocks)


class SamplingParams(BaseModel):
    """OpenAI's sampling_params for the grader model, less reasoning_effort (no local model reasons on demand)."""

    model_config = ConfigDict(extra="forbid")

    max_completions_tokens: int | None = Field(None, ge=1)  # default 32 for a local judge
    seed: int | None = None
    temperature: float | None = Field(None, ge=0)  # None or 0: greedy
    top_p: float | None = Field(None, gt=0, le=1)


class ScoreModelGrader(GraderBase):
    """A model scores the answer. `model` is, locally, a tunelab run of task reward_model (its head's raw score is
    the reward; `range` does not apply; `input` is optional: by default the head reads the row's prompt and the
    answer as one conversation, as it did in training), or a model that writes text (a built-in name, a checkpoint
    folder, a tunelab run of a text task, or a model served at `base_url`), used as a judge: `input` is rendered and
    sent, the first number in its answer, clamped to `range`, is the score (range[0] where it gives none)."""

    type: Literal["score_model"]
    input: list[ScoreModelMessage] = Field(default_factory=list)
    model: str
    range: tuple[float, float] = (0.0, 1.0)
    sampling_params: SamplingParams | None = None
    # tunelab's: `model` is served at this OpenAI-compatible base URL (a running `tunelab serve`, up to /v1) and
    # judges over HTTP; the key, where the server needs one, is read from the environment variable api_key_env.
    base_url: str | None = None
    api_key_env: str | None = None

    @model_validator(mode="after")
    def ordered_range(self) -> "ScoreModelGrader":
        if not self.range[0] < self.range[1]:
            raise ValueError(f"range {list(self.range)}: the low end must be below the high end")
        return self


class RewardModelReward(BaseModel):
    """tunelab's shorthand for a score_model whose model is a reward_model run: `{type: reward_model, name, run}`."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["reward_model"]
    name: str
    run: str  # the run folder

    def as_grader(self) -> ScoreModelGrader:
        return ScoreModelGrader(type="score_model", name=self.name, model=self.run)


Grader = Annotated[Union[StringCheckGrader, TextSimilarityGrader, PythonGrader, MultiGrader],  # noqa: UP007
                   Field(discriminator="type")]
MultiGrader.model_rebuild()


# ---- checks when the recipe is read ------------------------------------------------------------------------------


def check_grader(grader: Any, where: str) -> None:
    """What can be refused before a row is graded: templates, Python source, the multi formula."""
    where = f"{where} ({grader.type} '{grader.name}')"
    if isinstance(grader, (StringCheckGrader, TextSimilarityGrader)):
        check_template(grader.input, f"{where} input")
        check_template(grader.reference, f"{where} reference")
    elif isinstance(grader, PythonGrader):
        python_grade(grader, where)
    elif isinstance(grader, ScoreModelGrader):
        for index, message in enumerate(grader.input):
            check_template(message.text(), f"{where} input[{index}]")
    elif isinstance(grader, MultiGrader):
        names = formula_names(grader.calculate_output, where)
        unknown = sorted(names - set(grader.graders))
        if unknown:
            raise TunelabError(f"{where}: calculate_output names {', '.join(unknown)}, which are not among its "
                               f"graders ({', '.join(grader.graders)})")
        for key, inner in grader.graders.items():
            check_grader(inner, f"{where} graders.{key}")


def item_fields(grader: Any) -> set[str]:
    """The row fields a grader's templates read (the first step of each `item.` path)."""
    from tunelab.rewards.template import steps, variables

    if isinstance(grader, MultiGrader):
        return set().union(*(item_fields(inner) for inner in grader.graders.values()))
    if isinstance(grader, (StringCheckGrader, TextSimilarityGrader)):
        found = variables(grader.input) + variables(grader.reference)
    elif isinstance(grader, ScoreModelGrader):
        found = [variable for message in grader.input for variable in variables(message.text())]
    else:
        return set()
    return {str(steps(path)[0]) for namespace, path in found if namespace == "item" and steps(path)}


# ---- scoring -----------------------------------------------------------------------------------------------------


def grade(grader: Any, item: dict[str, Any], sample: dict[str, Any], where: str) -> float:
    """The grader's score for one answer (`sample`) to one row (`item`)."""
    if isinstance(grader, StringCheckGrader):
        text, reference = (render(grader.input, item, sample, where), render(grader.reference, item, sample, where))
        return float(string_check(grader.operation, text, reference))
    if isinstance(grader, TextSimilarityGrader):
        text, reference = (render(grader.input, item, sample, where), render(grader.reference, item, sample, where))
        return similarity(grader.evaluation_metric, text, reference)
    if isinstance(grader, PythonGrader):
        return python_grade(grader, where)(sample, item)
    scores = {key: grade(inner, item, sample, where) for key, inner in grader.graders.items()}
    return evaluate_formula(grader.calculate_output, scores)


def string_check(operation: str, text: str, reference: str) -> bool:
    if operation == "eq":
        return text == reference
    if operation == "ne":
        return text != reference
    if operation == "like":
        return reference in text
    return reference.lower() in text.lower()


def similarity(metric: str, text: str, reference: str) -> float:
    """A score in [0, 1] from the library that defines the metric."""
    if metric == "fuzzy_match":
        from rapidfuzz import fuzz

        return fuzz.ratio(text, reference) / 100
    if metric == "bleu":
        import sacrebleu

        return sacrebleu.sentence_bleu(text, [reference]).score / 100
    if metric == "gleu":
        from nltk.translate.gleu_score import sentence_gleu

        return float(sentence_gleu([reference.split()], text.split()))
    from rouge_score import rouge_scorer

    kind = "rougeL" if metric == "rouge_l" else f"rouge{metric[-1]}"
    return rouge_scorer.RougeScorer([kind]).score(reference, text)[kind].fmeasure


def python_grade(grader: PythonGrader, where: str) -> Callable[[dict, dict], Any]:
    """The grader's `grade(sample, item)`, compiled from its source (run in this Python, as the user's own code)."""
    namespace: dict[str, Any] = {}
    try:
        exec(compile(grader.source, f"<{where}>", "exec"), namespace)  # noqa: S102 (the user's own grader code)
    except Exception as error:  # a grader whose source does not even load: one line, not a traceback
        raise TunelabError(f"{where}: the source does not run ({type(error).__name__}: {error})") from None
    function = namespace.get("grade")
    if not callable(function):
        raise TunelabError(f"{where}: the source defines no function grade(sample, item)")
    return function


# The functions OpenAI's calculate_output allows, besides + - * / ^ and numbers.
FORMULA_FUNCTIONS: dict[str, Callable[..., float]] = {
    "min": min, "max": max, "abs": abs, "floor": math.floor, "ceil": math.ceil, "exp": math.exp, "sqrt": math.sqrt,
    "log": math.log}
OPERATORS: dict[type, Callable[[float, float], float]] = {
    ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
    ast.Div: lambda a, b: a / b, ast.Pow: lambda a, b: a ** b, ast.BitXor: lambda a, b: a ** b}


def formula_names(formula: str, where: str) -> set[str]:
    """The grader names a calculate_output formula uses; anything but arithmetic is refused (it is never eval'd)."""
    try:
        tree = ast.parse(formula, mode="eval")
    except SyntaxError:
        raise TunelabError(f"{where}: calculate_output '{formula}' is not a formula") from None
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FORMULA_FUNCTIONS or node.keywords:
                raise TunelabError(f"{where}: calculate_output may call {', '.join(FORMULA_FUNCTIONS)} only")
        elif isinstance(node, ast.Name):
            names.add(node.id)
        elif not isinstance(node, (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant, ast.Load, ast.USub,
                                   ast.UAdd, *OPERATORS)) or (isinstance(node, ast.Constant) and
                                                              not isinstance(node.value, (int, float))):
            raise TunelabError(f"{where}: calculate_output '{formula}': only numbers, grader names, + - * / ^ and "
                               f"{', '.join(FORMULA_FUNCTIONS)} are allowed")
    return names - set(FORMULA_FUNCTIONS)


def evaluate_formula(formula: str, scores: dict[str, float]) -> float:
    def value(node: ast.AST) -> float:
        if isinstance(node, ast.Expression):
            return value(node.body)
        if isinstance(node, ast.Constant):
            return float(node.value)
        if isinstance(node, ast.Name):
            return scores[node.id]
        if isinstance(node, ast.UnaryOp):
            return -value(node.operand) if isinstance(node.op, ast.USub) else value(node.operand)
        if isinstance(node, ast.Call):
            return float(FORMULA_FUNCTIONS[node.func.id](*(value(arg) for arg in node.args)))
        return OPERATORS[type(node.op)](value(node.left), value(node.right))

    return value(ast.parse(formula, mode="eval"))
