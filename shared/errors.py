"""Errors the ports raise, shared by every adapter so callers never see SDK-specific exceptions."""


class ControlPlaneError(Exception):
    """Base class for control-plane errors."""


class NotFound(ControlPlaneError, KeyError):
    """The experiment, trial, artifact or message does not exist."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "not found"


class AlreadyExists(ControlPlaneError):
    """A record with this key exists already."""


class ConcurrencyConflict(ControlPlaneError):
    """Someone else updated the record since it was read (stale version / ETag)."""


class InvalidPageToken(ControlPlaneError, ValueError):
    """A page token the store did not make: the caller's input (an API 422), never stored data."""


class BackendError(ControlPlaneError):
    """A compute backend failed; ``retryable`` says whether trying again may help; ``code`` is the cloud's
    error code when it gave one (ARM's ``SkuNotAvailable``, ``AllocationFailed``, ...)."""

    def __init__(self, message: str, *, retryable: bool = False, code: str | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.code = code


class CorruptRecord(ControlPlaneError):
    """A stored record does not validate: the store cannot hand it out (``reason`` says why, without the
    stored values). Listings carry a ``shared.records.UnreadableRecord`` in its place instead."""

    def __init__(self, experiment_id: str, reason: str) -> None:
        super().__init__(f"experiment {experiment_id!r}: {reason}")
        self.experiment_id = experiment_id
        self.reason = reason
