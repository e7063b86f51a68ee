"""Which Python runs which process: the proxy and the inspector live in separate environments.

The internet-facing proxy runs on a current Python with a current TLS stack (mitmproxy 12,
cryptography 50: ``pip install '.[proxy]'``); the inspector runs where its CPU torch wheel is
(Python 3.11: ``pip install '.[inspector]'``). ``make install`` creates both, ``.venv-proxy`` and
``.venv``, in the source tree. :func:`interpreter` finds the one for a process, in this order:

1. ``$PROMPTFENCE_PROXY_PYTHON`` / ``$PROMPTFENCE_INSPECTOR_PYTHON``, when set (it must work);
2. the running interpreter, when it has that process's key package (one environment with both);
3. the well-known environment in the source tree (``.venv-proxy/bin/python``, ``.venv/bin/python``).

A process whose environment is not found is an error that says what was tried and how to fix it.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from promptfence.errors import PromptFenceError

SOURCE_ROOT = Path(__file__).resolve().parents[1]
PROBE_TIMEOUT_S = 30.0


class InterpreterNotFound(PromptFenceError):
    """No usable Python environment for a process; the message says what was tried and the fix."""


@dataclass(frozen=True)
class Runtime:
    name: str  # the process: "proxy" or "inspector"
    env_var: str
    venv: str  # its environment's folder in the source tree
    module: str  # a package only that environment has
    extra: str  # the pyproject extra that installs it

    def venv_python(self, root: Path = SOURCE_ROOT) -> Path:
        return root / self.venv / "bin" / "python"


PROXY = Runtime("proxy", "PROMPTFENCE_PROXY_PYTHON", ".venv-proxy", "mitmproxy", "proxy")
INSPECTOR = Runtime("inspector", "PROMPTFENCE_INSPECTOR_PYTHON", ".venv", "presidio_analyzer", "inspector")
RUNTIMES = {runtime.name: runtime for runtime in (PROXY, INSPECTOR)}


def has_module(python: str | Path, module: str) -> bool:
    """Whether ``python`` runs and can import ``module`` (found, not imported: no model loads)."""
    if Path(python) == Path(sys.executable):
        return importlib.util.find_spec(module) is not None
    probe = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module!r}) else 3)"
    try:
        done = subprocess.run([str(python), "-c", probe], capture_output=True, timeout=PROBE_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def interpreter(runtime: Runtime, *, environ: dict[str, str] | None = None, root: Path = SOURCE_ROOT) -> str:
    """The Python that runs ``runtime``'s process (see the module docstring)."""
    environ = dict(os.environ) if environ is None else environ
    named = environ.get(runtime.env_var)
    if named:
        if has_module(named, runtime.module):
            return named
        raise InterpreterNotFound(
            f"${runtime.env_var} is {named}, which cannot import {runtime.module}: point it at the "
            f"{runtime.name}'s environment (pip install '.[{runtime.extra}]' there), or unset it"
        )
    if importlib.util.find_spec(runtime.module) is not None:
        return sys.executable
    candidate = runtime.venv_python(root)
    if candidate.exists() and has_module(candidate, runtime.module):
        return str(candidate)
    raise InterpreterNotFound(
        f"no Python environment for the {runtime.name}: {sys.executable} cannot import {runtime.module}"
        f" and {candidate} {'cannot either' if candidate.exists() else 'does not exist'}; run `make install`"
        f" (creates {runtime.venv} with '.[{runtime.extra}]'), or set ${runtime.env_var} to its python"
    )


def require(runtime: Runtime) -> None:
    """Stop with a clear message when this interpreter is not ``runtime``'s environment."""
    if importlib.util.find_spec(runtime.module) is None:
        raise InterpreterNotFound(
            f"`promptfence {runtime.name}` needs {runtime.module}, which {sys.executable} does not have:"
            f" the {runtime.name} runs from its own environment ({runtime.venv_python()}, made by"
            f" `make install`), or from any Python with '.[{runtime.extra}]' installed"
        )
