"""The wire formats of the GenAI web apps: one module per app, plus the generic layers.

Each app module (``chatgpt``, ``claude``, ``gemini``, ``perplexity``) holds that app's pure
functions and exports three explicit registry dicts: ``EXTRACTORS`` (request body -> what the
user sent), ``DECODERS`` (factories of streamed-answer accumulators) and ``BLOCK_REPLIES``
(the reply the web app renders when a policy blocks). :mod:`proxy.registry` merges them in
one place; the YAML catalogue in ``proxy/apps/`` names them. Adding an app is one YAML file
plus one module here and one line in the registry.

Nothing in this package imports mitmproxy: it works on bytes, so the same code serves the live
addon, offline replay and the tests. None of it may raise on malformed input except the
documented :class:`~proxy.wire.base.ExtractionError`, and no message quotes a body.
"""
