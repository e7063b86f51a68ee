"""Errors raised by model adapters, each carrying the detector status it stands for.

The inspection engine records a detector that raises one of these with :attr:`status`
(``invalid_output``, ``timeout``, ``unavailable``) instead of a generic ``failed``, so that a
policy and an operator can tell a model that answered outside its schema from one that is down.

Messages never contain prompt text, nor the model's reply (a reply may echo the prompt): they
name what was wrong (a field, a type, an HTTP status), never a value.
"""

from __future__ import annotations

from promptfence.core import DetectorStatus
from promptfence.errors import ConfigError, PromptFenceError


class InferenceError(PromptFenceError):
    """A model call failed; :attr:`status` is what the engine records for the detector."""

    status: DetectorStatus = DetectorStatus.FAILED


class InvalidModelOutput(InferenceError):
    """The model answered, but not with what its schema allows (not JSON, missing fields...)."""

    status = DetectorStatus.INVALID_OUTPUT


class ModelTimeout(InferenceError):
    """The model server did not answer within the adapter's timeout."""

    status = DetectorStatus.TIMEOUT


class ModelUnavailable(InferenceError):
    """The model server could not be reached, or answered with a server error (5xx, 429)."""

    status = DetectorStatus.UNAVAILABLE


class ModelRequestRejected(InferenceError):
    """The model server refused the request (4xx): a configuration or client bug."""

    status = DetectorStatus.FAILED


class ModelNotFoundError(ConfigError):
    """A model is configured but its local directory is missing or incomplete.

    Raised at start-up, never at request time: nothing is ever downloaded instead.
    """
