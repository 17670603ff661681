"""The shared HTML report pieces."""

from tunelab.present.html import Section, new_figure, page, svg, table


def test_page_with_table_and_embedded_svg():
    figure, axes = new_figure()
    axes.plot([1, 2, 3], [3, 1, 2])
    html = page("Report <1>", [Section("numbers").add(table(["a", "b"], [[1, 0.5], ["<x>", None]])),
                               Section("plot").add(svg(figure, "a line"))])
    assert "<title>Report &lt;1&gt;</title>" in html
    assert "<td class='num'>0.5</td>" in html and "&lt;x&gt;" in html
    assert "<svg" in html and "<figcaption>a line</figcaption>" in html
    assert "http://" not in html.split("<svg")[0]  # nothing fetched from the network before the plot
