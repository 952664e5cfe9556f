"""WebuiError and its subclasses: the only exception types the app raises on purpose."""

from __future__ import annotations


class WebuiError(Exception):
    """Base class of every error the app raises deliberately; its message is shown to the user as is.

    ``status_code`` is the HTTP status the API answers with.
    """

    status_code: int = 500


class InvalidRequestError(WebuiError):
    """A request field is out of range or unknown; the message names the field and what is allowed."""

    status_code = 422


class CheckpointNotFoundError(WebuiError):
    """No checkpoint matches the given name, title or hash (or none exist at all)."""

    status_code = 404


class UnknownModelTypeError(WebuiError):
    """The file's tensors match no supported architecture; the message names the file and the keys looked for."""

    status_code = 422


class CheckpointLoadError(WebuiError):
    """A checkpoint file could not be read or turned into a pipeline (corrupt, truncated, wrong shapes)."""

    status_code = 422


class UnsafeCheckpointError(CheckpointLoadError):
    """A .ckpt pickle references objects outside the allow-list; it was refused, nothing was executed."""


class WeightPatchError(WebuiError):
    """A change to the loaded weights does not fit the model (a key it does not have, or another shape)."""

    status_code = 422


class QueueFullError(WebuiError):
    """The job queue holds its maximum number of pending jobs."""

    status_code = 503


class OutOfMemoryError(WebuiError):
    """The device ran out of memory during a job (its cache is freed, so the next job can run)."""

    status_code = 503


class DownloadError(WebuiError):
    """A model download failed (network unreachable, HTTP error, checksum mismatch)."""

    status_code = 502


class SettingsError(WebuiError):
    """A setting value or command-line flag is invalid; the message names it."""

    status_code = 422
