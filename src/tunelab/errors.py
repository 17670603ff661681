"""The exceptions that reach the user as one clear line (see cli.py)."""


class TunelabError(Exception):
    """Bad input or a state the user can fix: the CLI prints the message on one line and exits with 2."""

    exit_code = 2


class ObjectiveNotMet(TunelabError):
    """The recipe's objective was checked and not met: exit code 3, what a CI pipeline keys on."""

    exit_code = 3


class StopRequested(BaseException):
    """Training stopped because someone asked it to (a fine-tuning job cancelled or paused through the API): not a
    failure, so run.json says interrupted and --resume goes on from the last checkpoint. A BaseException, like
    KeyboardInterrupt, so that no library's `except Exception` swallows it on the way out of the trainer."""

    def __init__(self, what: str):
        super().__init__(f"{what} requested")
        self.what = what  # cancel | pause
