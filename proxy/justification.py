"""Coaching with a reason: the ``Justification:`` line of a resend past a ``warn``.

A warn rule with ``justification: required`` stops the first send with a notice asking the user
to send it again with a line that starts ``Justification:`` and says why. That resend proceeds;
the reason is sealed into the record with the prompt (``Payload.justification``) and the viewer
shows it. The warn ledger (proxy/coaching.py) matches the resend to the first send by a digest
of the request *without* the justification line, so :func:`split_justification` is applied the
same way to both: the text the ledger sees is the prompt with that line removed and surrounding
white space trimmed.

The line may be anywhere in the prompt (first, last, in between); the prefix is matched without
regard to case or leading white space; the last such line counts when there are several (all
are removed from the matching text). A reason that is empty after the colon is no reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

PREFIX = "Justification:"
# A reason is a line, not a document: longer ones are cut (the whole prompt is sealed anyway).
MAX_REASON_CHARS = 2000
_LINE = re.compile(r"^[ \t]*justification[ \t]*:(?P<reason>[^\r\n]*)(?:\r?\n|$)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True)
class Justified:
    """A prompt split into the text the warn ledger matches on and the user's reason, if any."""

    prompt: str
    reason: str | None


def split_justification(prompt: str) -> Justified:
    reasons = [m.group("reason").strip() for m in _LINE.finditer(prompt)]
    rest = _LINE.sub("", prompt).strip()
    reason = reasons[-1][:MAX_REASON_CHARS] if reasons and reasons[-1] else None
    return Justified(rest, reason)
