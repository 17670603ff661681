"""Models in service: named versions, promotion and rollback (versions.py), and gated retraining (retrain.py)."""
