"""Request-body extraction: the types, and the registry of every app's extractors.

Extractors are pure functions from a :class:`RequestData` (decoded body, path, query,
headers) to an :class:`Extraction`, one module per app in :mod:`proxy.wire`, looked up by
the name the catalogue gives (``extractor: chatgpt.conversation``). They must be tolerant: a
body that does not have the expected shape raises :class:`ExtractionError` (which the addon
records as "could not decode"), never anything else, and the error message never quotes it.
"""

from __future__ import annotations

from proxy.registry import EXTRACTORS
from proxy.wire.base import Extraction, ExtractionError, Extractor, RequestData

__all__ = ["EXTRACTORS", "Extraction", "ExtractionError", "Extractor", "RequestData"]
