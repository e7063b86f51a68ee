"""Who sent a flow. The walking skeleton knows only the client address; authenticated
identities (Proxy-Authorization, trusted headers, IP maps, directory groups) plug in here as
further resolvers behind the same :class:`IdentityResolver` protocol."""

from __future__ import annotations

from typing import Protocol

from mitmproxy import http

from promptfence.core import Identity


class IdentityResolver(Protocol):
    def identify(self, flow: http.HTTPFlow) -> Identity: ...


class ClientAddressIdentity:
    """The fallback: the user is the client's IP address, in no group."""

    def identify(self, flow: http.HTTPFlow) -> Identity:
        address = flow.client_conn.peername[0] if flow.client_conn.peername else None
        return Identity(
            user=f"ip:{address}" if address else "anonymous",
            source="client_address",
            client_address=address,
        )
