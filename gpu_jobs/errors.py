"""Errors a trial reports to its caller as bad input rather than as a crash."""


class UserError(ValueError):
    """The request cannot run as given: missing data, unknown column, bad hyperparameter, no GPU, ...

    The CLI prints these as one ``error: <message>`` line and exits with status 2; the HPO driver marks
    the trial failed without retrying it (the same input would fail the same way again).
    """
