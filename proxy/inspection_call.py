"""One inspection, as the proxy makes it: a deadline, and a failure that says what kind it was.

Shared by the HTTP addon and the WebSocket guard so both record the same kinds (timeout,
unavailable, invalid answer, uninspectable) with the real elapsed time, never ``0.0 ms``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Protocol

from promptfence.core import DetectorStatus, Inspection, Operation
from promptfence.errors import InspectorInvalidAnswer, InspectorUnavailable


class InspectionPort(Protocol):
    async def inspect(self, operation: Operation) -> Inspection: ...


def timeouts_uninspectable(inspection: Inspection, prompt_chars: int) -> Inspection:
    """A detector that timed out on a very long prompt was slowed by the sender's input."""
    runs = tuple(
        dataclasses.replace(
            run,
            status=DetectorStatus.UNINSPECTABLE,
            error=f"{run.detector} did not finish on a {prompt_chars}-character prompt",
        )
        if run.status is DetectorStatus.TIMEOUT
        else run
        for run in inspection.runs
    )
    return dataclasses.replace(inspection, runs=runs)


async def inspect_within(
    inspector: InspectionPort, operation: Operation, timeout_s: float, *, uninspectable_chars: int | None = None
) -> Inspection:
    """The inspector's answer within ``timeout_s``, or an :meth:`Inspection.failure` naming the
    kind of failure. A prompt of ``uninspectable_chars`` or more that times out is uninspectable:
    size is the sender's lever to slow inspection down, so a fail-open on_error must not apply."""
    started = time.monotonic()
    big = uninspectable_chars is not None and len(operation.prompt) >= uninspectable_chars
    try:
        inspection = await asyncio.wait_for(inspector.inspect(operation), timeout_s)
        return timeouts_uninspectable(inspection, len(operation.prompt)) if big else inspection
    except TimeoutError:
        status, error = DetectorStatus.TIMEOUT, f"no answer within {timeout_s:g}s"
        if big:
            status = DetectorStatus.UNINSPECTABLE
            error = f"a {len(operation.prompt)}-character prompt was not inspected within {timeout_s:g}s"
    except InspectorInvalidAnswer as exc:
        status, error = DetectorStatus.INVALID_OUTPUT, str(exc)
    except InspectorUnavailable as exc:
        status, error = DetectorStatus.UNAVAILABLE, str(exc)
    except OSError as exc:
        status, error = DetectorStatus.UNAVAILABLE, f"unreachable: {type(exc).__name__}"
    except Exception as exc:  # any failure of the port is a recorded error, not a crash
        status, error = DetectorStatus.FAILED, f"failed: {type(exc).__name__}"
    return Inspection.failure("inspector", status, error, (time.monotonic() - started) * 1000.0)
