"""Hyperparameter search over a recipe (`tunelab sweep`): the space file, the Optuna study, the results."""
