"""One exception tree, so callers can catch PromptFence errors without catching bugs.

Messages never contain prompt or response text: they may reach terminals and plain logs.
"""

from __future__ import annotations


class PromptFenceError(Exception):
    """Base of every error PromptFence raises on purpose."""


class ConfigError(PromptFenceError):
    """A configuration or policy file is wrong; says which file, line, column and field."""

    def __init__(
        self,
        message: str,
        *,
        source: str | None = None,
        line: int | None = None,
        column: int | None = None,
        field: str | None = None,
    ) -> None:
        self.message = message
        self.source = source
        self.line = line
        self.column = column
        self.field = field
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = self.source or "<config>"
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        what = f"{self.field}: " if self.field else ""
        return f"{where}: {what}{self.message}"


class InspectorUnavailable(PromptFenceError):
    """The inspection service could not be reached or answered garbage."""


class InspectorInvalidAnswer(InspectorUnavailable):
    """The inspector answered, but not with a complete Inspection: the message names the field
    that was wrong (``answer missing runs for presidio, secrets``), never the prompt."""


class RecordNotDurable(PromptFenceError):
    """A log record could be made durable neither in the database nor in the spool.

    The recorder raises it only under ``logs.on_unrecordable: block``; the proxy then does not
    forward the prompt. The message carries the errno/exception kind, never record content."""


class KeyMaterialError(PromptFenceError):
    """A key file is missing, malformed, or does not open a record."""
