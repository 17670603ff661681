"""A run: its folder (folder.py), its typed record run.json and evaluation eval.json (record.py), its models
loaded for inference (models.py), and the listing and comparison of runs (listing.py)."""
