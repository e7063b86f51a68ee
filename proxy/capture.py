"""Recording flows for offline replay: the addon behind ``promptfence capture``.

It records only flows of the app catalogue's hosts (never the rest of someone's browsing),
after the PromptFence addon ran (so a streamed answer's copy is in the flow), to a mitmproxy
flow file (written as flows finish) and/or a HAR file (written when the proxy stops). Capture
files hold prompts and answers in clear: they are created mode 0600 and are for test
environments and consenting users only.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import IO

from mitmproxy import http, io
from mitmproxy.addons.savehar import SaveHar

from proxy.catalogue import Catalogue

log = logging.getLogger("promptfence.capture")


def _private_file(path: Path) -> IO[bytes]:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    return os.fdopen(fd, "wb")


class CaptureAddon:
    def __init__(self, catalogue: Catalogue, mitm_path: Path | None = None, har_path: Path | None = None) -> None:
        self.catalogue = catalogue
        self.har_path = har_path
        self.flows: list[http.HTTPFlow] = []
        self._mitm = _private_file(mitm_path) if mitm_path else None
        self._writer = io.FlowWriter(self._mitm) if self._mitm else None  # type: ignore[no-untyped-call]

    def _keep(self, flow: http.HTTPFlow) -> None:
        if self.catalogue.app_for_host(flow.request.pretty_host) is None:
            return
        if self._writer is not None and self._mitm is not None:
            # The addon's live state (decoders, taps) is not serialisable and not for the file.
            metadata = flow.metadata
            flow.metadata = {k: v for k, v in metadata.items() if isinstance(v, (str, int, float, bool))}
            try:
                self._writer.add(flow)
            finally:
                flow.metadata = metadata
            self._mitm.flush()
        if self.har_path is not None:
            self.flows.append(flow)

    def response(self, flow: http.HTTPFlow) -> None:
        self._keep(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._keep(flow)

    def done(self) -> None:
        if self._mitm is not None:
            self._mitm.close()
        if self.har_path is not None:
            har = SaveHar().make_har(self.flows)
            with _private_file(self.har_path) as fh:
                fh.write(json.dumps(har, indent=1).encode())
            log.info("capture: %d flows written to %s", len(self.flows), self.har_path)
