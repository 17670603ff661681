"""The data report: `data_report.json` (everything, machine-readable), `data_report.html` (self-contained, with
plots) and the terminal summary (rich tables), all from the same dictionary."""

from __future__ import annotations

import html
import statistics
from collections import Counter
from typing import Any

from rich.console import Console
from rich.table import Table

from tunelab import __version__
from tunelab.data.doctor import STAGES, Diagnosis
from tunelab.data.split import SPLITS
from tunelab.reports import Section, new_figure, page, paragraph, svg, table

SHOWN_REJECTED = 25  # rows listed in the HTML report; rejected.jsonl has them all


def build_report(diagnosis: Diagnosis, data: Any, key: str) -> dict[str, Any]:
    splits = diagnosis.splits
    by_stage = Counter(item.stage for item in diagnosis.rejected)
    read = sum(diagnosis.read.values())
    rejected = len(diagnosis.rejected)
    added = sum(diagnosis.added.values())
    by_file = {}
    for role, count in diagnosis.read.items():
        gone = sum(item.file_role == role for item in diagnosis.rejected)
        by_file[role] = {"read": count, "kept": count - gone, "rejected": gone}
    report = {
        "tunelab_version": __version__,
        "key": key,
        "files": [vars(item) for item in diagnosis.files],
        "kinds": diagnosis.kinds,
        "counts": {"read": read, "kept": read - rejected, "rejected": rejected, "added": added,
                   "final": read - rejected + added, "by_file": by_file},
        "rejected_by_stage": {stage: by_stage[stage] for stage in STAGES if by_stage[stage]},
        "splits": {name: split_summary(diagnosis, name) for name in SPLITS},
        "duplicates": {"exact": by_stage["duplicate"], "near": by_stage["near_duplicate"],
                       "label_conflicts": by_stage["label_conflict"],
                       "across_splits": by_stage["duplicate_across_splits"]},
        "contamination": {"ngram": data.contamination.ngram, "threshold": data.contamination.threshold,
                          "action": data.contamination.action, "enabled": data.contamination.enabled,
                          "hits": diagnosis.contamination},
        "pii": {"counts": diagnosis.pii, "scrubbed": diagnosis.pii_scrubbed},
        "cleaning": {"rows_changed": diagnosis.cleaned_rows},
        "augmented": diagnosis.added,
        "length": {"max_length": data.max_length, "overlong": data.overlong, "min_tokens": data.clean.min_tokens,
                   "truncated": sum(summary_truncated(diagnosis, name) for name in SPLITS),
                   "dropped": by_stage["length"]},
        "lint": diagnosis.lint.to_json(),
        "problems": diagnosis.problems,
        "timing": {"seconds": diagnosis.seconds, "workers": diagnosis.workers,
                   "rows_per_second": round(read / max(sum(diagnosis.seconds.values()), 1e-9), 1)},
        "token_lengths": {name: [row.length for row in splits[name] if row.length is not None] for name in SPLITS},
        "duplicate_examples": [item.to_json() for item in diagnosis.rejected
                               if item.stage in ("duplicate", "near_duplicate", "label_conflict")][:SHOWN_REJECTED],
        "first_rejected": first_by_stage(diagnosis),
        "rejected_examples": [{k: v for k, v in item.to_json().items() if k not in ("row", "raw")}
                              for item in diagnosis.rejected[:SHOWN_REJECTED]],
    }
    return report


def first_by_stage(diagnosis: Diagnosis) -> dict[str, dict[str, Any]]:
    first: dict[str, dict[str, Any]] = {}
    for item in diagnosis.rejected:
        first.setdefault(item.stage, {"source": item.source, "line": item.line, "reason": item.reason})
    return first


def summary_truncated(diagnosis: Diagnosis, name: str) -> int:
    return sum(row.truncated for row in diagnosis.splits[name])


def split_summary(diagnosis: Diagnosis, name: str) -> dict[str, Any]:
    rows = diagnosis.splits[name]
    lengths = sorted(row.length for row in rows if row.length is not None)
    encoded = [row.encoded for row in rows if row.encoded is not None]
    labels = Counter(row.example.label for row in rows if row.example.label is not None)
    dropped = sum(item.split == name and item.stage == "length" and "max_length" in item.reason
                  for item in diagnosis.rejected)
    return {
        "rows": len(rows),
        "added": sum(row.role == "augment" for row in rows),
        "kinds": dict(Counter(row.example.kind for row in rows)),
        "tokens": sum(len(row.encoded.input_ids) if row.encoded else row.length or 0 for row in rows),
        "label_tokens": sum(item.label_count for item in encoded),
        "truncated": summary_truncated(diagnosis, name),
        "dropped_overlong": dropped,
        "length": length_stats(lengths),
        "labels": dict(labels.most_common()),
    }


def length_stats(lengths: list[int]) -> dict[str, Any]:
    if not lengths:
        return {}
    return {"min": lengths[0], "median": round(statistics.median(lengths)),
            "p95": lengths[min(len(lengths) - 1, int(0.95 * len(lengths)))], "max": lengths[-1]}


# ---- terminal ---------------------------------------------------------------------------------------------------


def print_report(console: Console, report: dict[str, Any]) -> None:
    counts = report["counts"]
    files = Table(title="rows by file: read = kept + rejected")
    for column in ("file", "role", "read", "kept", "rejected"):
        files.add_column(column, justify="left" if column in ("file", "role") else "right")
    for item in report["files"]:
        role = "train" if item["role"] == "generated" else item["role"]
        numbers = counts["by_file"].get(role, {})
        files.add_row(item["path"], item["role"], *(f"{numbers.get(k, 0):,}" for k in ("read", "kept", "rejected")))
    files.add_row("all", "", f"{counts['read']:,}", f"{counts['kept']:,}", f"{counts['rejected']:,}", style="bold")
    console.print(files)

    splits = Table(title="splits")
    for column in ("split", "rows", "added", "tokens", "median len", "max len", "truncated", "classes"):
        splits.add_column(column, justify="left" if column in ("split", "classes") else "right")
    for name, info in report["splits"].items():
        classes = ", ".join(f"{label} {count}" for label, count in list(info["labels"].items())[:6])
        splits.add_row(name, f"{info['rows']:,}", f"{info['added']:,}", f"{info['tokens']:,}",
                       str(info["length"].get("median", "-")), str(info["length"].get("max", "-")),
                       f"{info['truncated']:,}", classes)
    console.print(splits)

    if report["rejected_by_stage"]:
        stages = Table(title="rejected rows (all in rejected.jsonl, with file, line and reason)")
        stages.add_column("stage")
        stages.add_column("rows", justify="right")
        stages.add_column("first example")
        for stage, count in report["rejected_by_stage"].items():
            first = report["first_rejected"][stage]
            stages.add_row(stage, f"{count:,}", f"{first['source']}:{first['line']}: {first['reason']}")
        console.print(stages)

    dup, cont, pii = report["duplicates"], report["contamination"], report["pii"]
    console.print(f"[bold]duplicates[/bold] exact {dup['exact']:,}, near {dup['near']:,}, label conflicts "
                  f"{dup['label_conflicts']:,}, across splits {dup['across_splits']:,}")
    removed = sum(hit["removed"] for hit in cont["hits"])
    console.print(f"[bold]contamination[/bold] {len(cont['hits']):,} evaluation row(s) with >= "
                  f"{cont['threshold']:.0%} of their {cont['ngram']}-grams in train; {removed:,} removed")
    found = ", ".join(f"{kind} {count:,}" for kind, count in pii["counts"].items()) or "none"
    action = "replaced by placeholders" if pii["scrubbed"] else "counted only; data.pii.scrub: true replaces them"
    console.print(f"[bold]personal data[/bold] {found} ({action})")
    length = report["length"]
    console.print(f"[bold]length[/bold] max_length {length['max_length']}: {length['dropped']:,} row(s) rejected, "
                  f"{length['truncated']:,} truncated")
    if report["augmented"]:
        console.print(f"[bold]augmented[/bold] {', '.join(f'{k} +{v:,}' for k, v in report['augmented'].items())}")
    print_lint(console, report["lint"])
    for problem in report["problems"]:
        console.print(f"[bold red]problem[/bold red] {problem}", markup=True, highlight=False)


def print_lint(console: Console, lint: dict[str, Any]) -> None:
    from rich.text import Text

    if lint["skipped"]:
        console.print(f"[bold]template lint[/bold] skipped: {lint['skipped']}")
        return
    marks = " ".join(f"{'[green]ok[/green]' if c['passed'] else '[red]FAIL[/red]'} {c['name']}"
                     for c in lint["checks"])
    console.print(f"[bold]template lint[/bold] {marks}")
    for example in lint["examples"][:1]:
        console.print(f"[dim]{example['where']} as trained; the loss falls on the highlighted text:[/dim]")
        console.print(Text.assemble(*[(text, "black on yellow" if loss else "") for text, loss in example["segments"]]))


# ---- HTML -------------------------------------------------------------------------------------------------------


def html_report(report: dict[str, Any], title: str) -> str:
    counts = report["counts"]
    summary = Section("Summary")
    summary.add(paragraph(f"read {counts['read']:,} = kept {counts['kept']:,} + rejected {counts['rejected']:,}; "
                          f"added by augmentation {counts['added']:,}; rows to use {counts['final']:,}"))
    summary.add(table(["role", "read", "kept", "rejected"],
                      [[role, c["read"], c["kept"], c["rejected"]] for role, c in counts["by_file"].items()]))
    summary.add(table(["file", "role", "sha256", "rows"],
                      [[f["path"], f["role"], f["sha256"][:16], f["rows"]] for f in report["files"]]))
    for problem in report["problems"]:
        summary.add(f"<p class='bad'>problem: {html.escape(problem)}</p>")
    sections = [summary, splits_section(report), lengths_section(report)]
    if any(info["labels"] for info in report["splits"].values()):
        sections.append(labels_section(report))
    sections += [rejected_section(report), duplicates_section(report), contamination_section(report),
                 pii_section(report), lint_section(report)]
    timing = report["timing"]
    sections.append(Section("Timing").add(paragraph(
        f"{counts['read']:,} rows in {sum(timing['seconds'].values()):.2f} s ({timing['rows_per_second']:,} rows/s) "
        f"with {timing['workers']} process(es); " + ", ".join(f"{k} {v:.2f} s" for k, v in timing["seconds"].items())
    )))
    return page(title, sections, subtitle=f"tunelab {report['tunelab_version']} data report, key {report['key'][:16]}")


def splits_section(report: dict[str, Any]) -> Section:
    rows = [[name, info["rows"], info["added"], ", ".join(f"{k} {v}" for k, v in info["kinds"].items()),
             info["tokens"], info["label_tokens"], info["length"].get("median"), info["length"].get("p95"),
             info["length"].get("max"), info["truncated"], info["dropped_overlong"]]
            for name, info in report["splits"].items()]
    return Section("Rows per split").add(table(
        ["split", "rows", "added", "kinds", "tokens", "loss tokens", "median len", "p95 len", "max len", "truncated",
         "dropped over max_length"], rows))


def lengths_section(report: dict[str, Any]) -> Section:
    section = Section("Token lengths")
    lengths = {name: values for name, values in report["token_lengths"].items() if values}
    if not lengths:
        return section.add(paragraph("no rows"))
    figure, axes = new_figure()
    axes.hist(list(lengths.values()), bins=40, label=list(lengths), stacked=True)
    limit = report["length"]["max_length"]
    longest = max(max(values) for values in lengths.values())
    if limit <= 1.5 * longest:  # else the line would squeeze the histogram into a corner; the text below says it
        axes.axvline(limit, color="#cf222e", linestyle="--", label=f"max_length {limit}")
    axes.set_xlabel("tokens per row (before truncation)")
    axes.set_ylabel("rows")
    axes.legend()
    length = report["length"]
    section.add(svg(figure, "Token length per row, by split"))
    return section.add(paragraph(f"data.max_length {limit} ({length['overlong']}): {length['dropped']:,} row(s) "
                                 f"rejected for length, {length['truncated']:,} truncated."))


def labels_section(report: dict[str, Any]) -> Section:
    section = Section("Label balance")
    names = sorted({label for info in report["splits"].values() for label in info["labels"]})
    rows = [[label] + [report["splits"][split]["labels"].get(label, 0) for split in SPLITS] for label in names]
    section.add(table(["class", *SPLITS], rows))
    figure, axes = new_figure()
    train = report["splits"]["train"]["labels"]
    axes.bar(list(train), list(train.values()), color="#4472c4")
    axes.set_ylabel("train rows")
    axes.tick_params(axis="x", rotation=45)
    return section.add(svg(figure, "Train rows per class"))


def rejected_section(report: dict[str, Any]) -> Section:
    section = Section("Rejected rows")
    section.add(table(["stage", "rows"], list(report["rejected_by_stage"].items())))
    section.add(paragraph(f"The first {SHOWN_REJECTED}; rejected.jsonl holds every one with the row itself."))
    return section.add(table(["where", "file", "stage", "reason"],
                             [[f"{r['source']}:{r['line']}", r["file_role"], r["stage"], r["reason"]]
                              for r in report["rejected_examples"]]))


def duplicates_section(report: dict[str, Any]) -> Section:
    dup = report["duplicates"]
    section = Section("Duplicates")
    section.add(table(["kind", "rows"], [["exact (case and spacing ignored)", dup["exact"]],
                                         ["near (MinHash LSH, checked exactly)", dup["near"]],
                                         ["same text, other label", dup["label_conflicts"]],
                                         ["evaluation row repeating train or validation", dup["across_splits"]]]))
    return section.add(table(["where", "kind", "reason"],
                             [[f"{d['source']}:{d['line']}", d["stage"], d["reason"]]
                              for d in report["duplicate_examples"]]))


def contamination_section(report: dict[str, Any]) -> Section:
    cont = report["contamination"]
    section = Section("Contamination")
    if not cont["enabled"]:
        return section.add(paragraph("not checked (data.contamination.enabled: false)"))
    section.add(paragraph(f"Evaluation rows with at least {cont['threshold']:.0%} of their {cont['ngram']}-grams "
                          f"in train: {len(cont['hits']):,} (action: {cont['action']})."))
    return section.add(table(["split", "row", "overlap", "most shared with", "removed"],
                             [[h["split"], h["where"], h["overlap"], h["train_where"], h["removed"]]
                              for h in cont["hits"]]))


def pii_section(report: dict[str, Any]) -> Section:
    pii = report["pii"]
    section = Section("Personal data")
    section.add(paragraph("Replaced by placeholders such as <EMAIL>." if pii["scrubbed"]
                          else "Counted only (set data.pii.scrub: true to replace them by placeholders)."))
    return section.add(table(["kind", "found"], list(pii["counts"].items()) or [["none", 0]]))


def lint_section(report: dict[str, Any]) -> Section:
    lint = report["lint"]
    section = Section("Template lint")
    if lint["skipped"]:
        return section.add(paragraph(f"skipped: {lint['skipped']}"))
    section.add(table(["check", "passed", "detail"], [[c["name"], c["passed"], c["detail"]] for c in lint["checks"]]))
    section.add(paragraph("Rendered rows as training sees them; highlighted text carries the loss."))
    for example in lint["examples"]:
        body = "".join(f"<mark>{html.escape(text)}</mark>" if loss else html.escape(text)
                       for text, loss in example["segments"])
        section.add(f"<p><b>{html.escape(example['where'])}</b></p><pre>{body}</pre>")
    return section
