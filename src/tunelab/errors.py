"""The exceptions that reach the user as one clear line (see cli.py)."""


class TunelabError(Exception):
    """Bad input or a state the user can fix: the CLI prints the message on one line and exits with 2."""

    exit_code = 2


class ObjectiveNotMet(TunelabError):
    """The recipe's objective was checked and not met: exit code 3, what a CI pipeline keys on."""

    exit_code = 3
