"""OAuth 2.0 client-credentials tokens for Kafka SASL/OAUTHBEARER in aiokafka/Faust.

librdkafka (sources, sinks) fetches tokens itself (``sasl.oauthbearer.method=oidc``);
aiokafka only calls a token provider, so the Faust workers need this one. It asks
the token endpoint once, reuses the token until shortly before it expires, and
lets only one refresh run at a time (every broker connection asks for a token).
"""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Callable
from urllib.parse import quote_plus

import aiohttp
from aiokafka.abc import AbstractTokenProvider

# Refresh this long before expiry so a token never expires mid-handshake.
REFRESH_MARGIN_S = 30.0
# Used when the server omits expires_in (RFC 6749 makes it optional).
DEFAULT_LIFETIME_S = 300.0


class TokenError(RuntimeError):
    """The token endpoint refused or answered something that is not a token."""


class ClientCredentialsTokenProvider(AbstractTokenProvider):
    def __init__(
        self,
        token_endpoint_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
        timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.token_endpoint_url = token_endpoint_url
        self.client_id = client_id
        self._client_secret = client_secret
        self.scope = scope
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._lock: asyncio.Lock | None = None

    def __repr__(self) -> str:
        # Never show the secret in logs or tracebacks.
        return f"{type(self).__name__}({self.token_endpoint_url!r}, client_id={self.client_id!r})"

    async def token(self) -> str:
        if self._token is not None and self._clock() < self._expires_at:
            return self._token
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            # Another caller may have refreshed while we waited for the lock.
            if self._token is not None and self._clock() < self._expires_at:
                return self._token
            token, lifetime = await self._fetch()
            self._token = token
            self._expires_at = self._clock() + max(lifetime - REFRESH_MARGIN_S, lifetime / 2)
            return token

    async def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        # RFC 6749 §2.3.1: client_secret_basic is the method servers must support; id and
        # secret are form-urlencoded before base64 (a ':' in the secret must survive).
        raw = f"{quote_plus(self.client_id)}:{quote_plus(self._client_secret)}"
        headers = {"Authorization": "Basic " + base64.b64encode(raw.encode()).decode("ascii")}
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.post(self.token_endpoint_url, data=form, headers=headers) as resp,
            ):
                body = await resp.text()
                if resp.status != 200:
                    raise TokenError(
                        f"token endpoint {self.token_endpoint_url} answered {resp.status}: {body[:200]}"
                    )
                try:
                    payload = await resp.json(content_type=None)
                except ValueError as exc:
                    raise TokenError(f"token endpoint {self.token_endpoint_url} returned non-JSON") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TokenError(f"token endpoint {self.token_endpoint_url} unreachable: {exc!r}") from exc
        token = payload.get("access_token") if isinstance(payload, dict) else None
        if not isinstance(token, str) or not token:
            raise TokenError(f"token endpoint {self.token_endpoint_url} returned no access_token")
        lifetime = payload.get("expires_in", DEFAULT_LIFETIME_S)
        try:
            lifetime_s = float(lifetime)
        except (TypeError, ValueError):
            lifetime_s = DEFAULT_LIFETIME_S
        return token, lifetime_s
