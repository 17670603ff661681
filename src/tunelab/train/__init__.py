"""Training recipes on the HF/TRL trainer stack."""
