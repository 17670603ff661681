"""Property-based: random lines never crash the readers (a bad row is a reason, a bad file one clear error), and
with good rows, exact duplicates, unreadable lines, rows missing a field and empty answers planted at random places,
the data doctor's report counts exactly what was planted, per stage, and rejected.jsonl lists exactly those lines."""

import json
from collections import Counter

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.conftest import unique_words
from tests.tiny import tiny_tokenizer
from tunelab.config.schema import DataSection
from tunelab.data.cache import prepare_data
from tunelab.data.formats import parse_items
from tunelab.data.readers import BadRow, Record, scan_records
from tunelab.errors import TunelabError

FIELDS = ["prompt", "completion", "messages", "conversations", "text", "label", "chosen", "rejected",
          "instruction", "output", "input", "system"]
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30))
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "robot"]),
                                           "content": st.one_of(st.text(max_size=20), st.integers())}), max_size=4)
values = st.one_of(scalars, messages, st.lists(scalars, max_size=3))
rows = st.dictionaries(st.sampled_from(FIELDS), values, max_size=5)
json_lines = rows.map(lambda row: json.dumps(row).encode())
junk_lines = st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\r" not in b)
other_json = st.one_of(scalars, st.lists(scalars, max_size=3)).map(lambda v: json.dumps(v).encode())
# Rows that fit, from a small alphabet so that duplicates and near-duplicates are common.
short_text = st.text(alphabet="ab \n\u00e9\x07", max_size=12)
good_lines = st.fixed_dictionaries({"prompt": short_text, "completion": short_text}).map(
    lambda row: json.dumps(row).encode())
lines = st.lists(st.one_of(good_lines, json_lines, junk_lines, other_json), min_size=1, max_size=12)


def write(tmp_path_factory, content: bytes):
    path = tmp_path_factory.mktemp("p") / "d.jsonl"
    path.write_bytes(content)
    return path


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=lines, fmt=st.sampled_from(["auto", "messages", "prompt_completion", "label", "preference"]))
def test_random_lines_never_crash_the_readers(tmp_path_factory, lines, fmt):
    path = write(tmp_path_factory, b"\n".join(lines) + b"\n")
    try:
        items = scan_records(path)
        examples, bad = parse_items(items, fmt, {}, None)
    except TunelabError as error:  # a problem with the whole file: one line naming the file
        assert str(error).startswith(str(path))
        return
    assert all(isinstance(item, (Record, BadRow)) for item in items)
    assert len(examples) + len(bad) == len(items)
    assert all(b.reason and b.source == str(path) for b in bad)


@st.composite
def planted_lines(draw):
    """Lines of a prompt/completion file with known bad rows planted at random places; (lines, expected) where
    expected maps each bad row's line number (from 1) to the stage that must reject it."""
    good = [json.dumps({"prompt": f"reverse {word}", "completion": word[::-1]})
            for word in unique_words(draw(st.integers(1, 10)), "abcdefgh", seed=draw(st.integers(0, 99)))]
    bad = ([(draw(st.sampled_from(["{broken json", '{"prompt": "cut', "[1, 2]", '"just a string"'])), "read")
            for _ in range(draw(st.integers(0, 3)))]
           + [(json.dumps({"prompt": f"no answer {n}"}), "parse") for n in range(draw(st.integers(0, 3)))]
           + [(json.dumps({"prompt": f"empty {n}", "completion": draw(st.sampled_from(["", "  ", "\n"]))}), "clean")
              for n in range(draw(st.integers(0, 3)))])
    lines = draw(st.permutations([(line, "good") for line in good] + bad))
    for _ in range(draw(st.integers(0, 4))):  # an exact duplicate (in another case) somewhere after its original
        original = draw(st.sampled_from([n for n, (_, kind) in enumerate(lines) if kind == "good"]))
        row = json.loads(lines[original][0])
        twin = json.dumps({"prompt": row["prompt"].upper(), "completion": row["completion"]})
        lines.insert(draw(st.integers(original + 1, len(lines))), (twin, "duplicate"))
    expected = {number: kind for number, (_, kind) in enumerate(lines, start=1) if kind != "good"}
    return [line for line, _ in lines], expected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(planted=planted_lines(), validation=st.sampled_from([0, 0.2]))
def test_the_report_counts_exactly_the_planted_rows(tmp_path_factory, planted, validation):
    lines, expected = planted
    path = write(tmp_path_factory, "\n".join(lines).encode() + b"\n")
    tokenizer = tiny_tokenizer()
    data = DataSection(train=str(path), format="prompt_completion", max_length=64,
                       split={"validation": validation, "test": 0}, dedup={"exact": True, "near": False})
    prepared = prepare_data(data, tokenizer, {tokenizer.eos_token_id}, 1024, path.parent / "home", check=True)
    report = prepared.report
    event(f"{len(expected)} planted bad rows")
    assert report["counts"]["read"] == len(lines)
    assert report["rejected_by_stage"] == dict(Counter(expected.values()))
    good = len(lines) - len(expected)
    assert sum(len(rows) for rows in vars(prepared.splits()).values()) == good
    assert sum(report["splits"][name]["rows"] for name in ("train", "validation", "test")) == good
    rejected = [json.loads(line) for line in (prepared.folder / "rejected.jsonl").read_text().split("\n") if line]
    assert {item["line"]: item["stage"] for item in rejected} == expected
    assert len(rejected) == len(expected) and all(item["source"] == str(path) for item in rejected)


tsv_lines = st.lists(st.binary(max_size=30).filter(lambda b: b"\n" not in b and b"\r" not in b), min_size=1,
                     max_size=10)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=tsv_lines)
def test_random_bytes_never_crash_the_tsv_reader(tmp_path_factory, lines):
    path = write(tmp_path_factory, b"\n".join(lines) + b"\n")
    try:
        items = scan_records(path, "tsv", ["label", "text"])
        examples, bad = parse_items(items, "label", {}, None)
    except TunelabError as error:
        assert str(error).startswith(str(path))
        return
    assert len(examples) + len(bad) == len(items)
