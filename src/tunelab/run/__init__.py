"""A run: its folder (folder.py), its typed record run.json and evaluation eval.json (record.py), its models
loaded for inference (models.py), where a chained run (model.from_run) starts and so where every run's base model is
(chain.py), and the listing and comparison of runs (listing.py)."""
