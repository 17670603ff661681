"""data_report.html: the data doctor's findings as one self-contained page (plots as SVG, no network)."""

from __future__ import annotations

import html
from typing import Any

from tunelab.data.report import SHOWN_REJECTED
from tunelab.data.split import SPLITS
from tunelab.present.html import Section, new_figure, page, paragraph, svg, table


def html_report(report: dict[str, Any], title: str) -> str:
    counts = report["counts"]
    summary = Section("Summary")
    summary.add(paragraph(f"read {counts['read']:,} = kept {counts['kept']:,} + rejected {counts['rejected']:,}; "
                          f"added by augmentation {counts['added']:,}; rows to use {counts['final']:,}"))
    summary.add(table(["role", "read", "kept", "rejected"],
                      [[role, c["read"], c["kept"], c["rejected"]] for role, c in counts["by_file"].items()]))
    summary.add(table(["file", "role", "sha256", "rows"],
                      [[f["path"], f["role"], f["sha256"][:16], f["rows"]] for f in report["files"]]))
    if report.get("canaries"):  # data.canaries: secrets put in train on purpose, for the privacy probe
        summary.add(paragraph(
            f"canaries inserted into train (data.canaries, listed in canaries.jsonl): {len(report['canaries'])}, "
            f"{sum(item['repeats'] for item in report['canaries'])} rows with their repeats"))
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
