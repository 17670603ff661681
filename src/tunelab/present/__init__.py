"""Presentation: how tunelab shows what the domain modules return. One number formatter (format.py) serves the
terminal (console.py), the HTML reports (html.py, eval_report.py, data_report.py) and the model card (card.py)."""
