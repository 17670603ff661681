"""Property-based: random lines never crash the readers (a bad row is a reason, a bad file one clear error), and
whatever comes in, the data doctor's counts add up: read = kept + rejected."""

import json

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tunelab.config.schema import DataSection
from tunelab.data.cache import prepare_data
from tunelab.data.formats import parse_items
from tunelab.data.readers import BadRow, Record, scan_records
from tunelab.errors import TunelabError
from tunelab.models.tiny import tiny_tokenizer

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
mostly_good = st.lists(st.one_of(good_lines, good_lines, good_lines, json_lines, junk_lines), min_size=3, max_size=16)


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


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=mostly_good, dedup=st.booleans(), validation=st.sampled_from([0, 0.2]))
def test_counts_always_add_up(tmp_path_factory, lines, dedup, validation):
    path = write(tmp_path_factory, b"\n".join(lines) + b"\n")
    tokenizer = tiny_tokenizer()
    data = DataSection(train=str(path), format="prompt_completion", max_length=64,
                       split={"validation": validation, "test": 0}, dedup={"exact": dedup, "near": dedup})
    try:
        prepared = prepare_data(data, tokenizer, {tokenizer.eos_token_id}, 1024, path.parent / "home", check=True)
    except TunelabError as error:
        assert "no rows" in str(error)
        return
    counts = prepared.report["counts"]
    event(f"kept {min(counts['kept'], 2)}, rejected {min(counts['rejected'], 2)}")
    assert counts["read"] == counts["kept"] + counts["rejected"]
    assert counts["kept"] == sum(len(getattr(prepared.splits(), name)) for name in ("train", "validation", "test"))
    # JSON lines may hold U+0085 or U+2028 unescaped, which str.splitlines() would also split on
    assert counts["rejected"] == (prepared.folder / "rejected.jsonl").read_text().count("\n")


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
