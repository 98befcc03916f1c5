"""Gate: who is calling and may they (API key, budget, rate limits), before anything is forwarded."""

from __future__ import annotations

from collections.abc import Awaitable

from gateway.context import RequestContext
from gateway.cost import estimate_input_tokens
from gateway.errors import TooManyRequests
from gateway.tenants import Tenants


class Admission:
    """401 for a missing or unknown key, 429 with Retry-After past a rate limit or the day's budget."""

    def __init__(self, tenants: Tenants) -> None:
        self._tenants = tenants

    def enter(self, ctx: RequestContext) -> Awaitable[None] | None:
        tenants = self._tenants
        tenant = tenants.authenticate(ctx.headers)
        if tenant is None:
            return None
        ctx.tenant = tenant
        if not tenant.tokens_per_minute:  # the estimate is only needed against a token rate
            return tenants.check(tenant, 0)
        document = ctx.document
        if tenants.decides_at_once:
            # First against a bound no estimate exceeds: if that fits, so does the estimate (the token rate
            # is only checked, never charged, so nothing needs undoing). The estimate is read only near the limit.
            try:
                return tenants.check(tenant, _token_bound(ctx.body, document))
            except TooManyRequests:
                pass
        return tenants.check(tenant, _expected_tokens(document))


def _expected_tokens(document: object) -> int:
    """The prompt's estimated tokens plus the answer's `max_tokens`, when the request sets one."""
    if not isinstance(document, dict):
        return 0
    max_tokens = document.get("max_tokens")
    return estimate_input_tokens(document) + (max_tokens if isinstance(max_tokens, int) else 0)


def _token_bound(body: bytes, document: object) -> int:
    """At least `_expected_tokens(document)`: the prompt's text takes a byte or more of the body per
    character (four to a token), a pre-tokenised prompt two or more per token ("1,"); plus one for the
    estimate's rounding up."""
    max_tokens = document.get("max_tokens") if isinstance(document, dict) else None
    return len(body) + 1 + (max_tokens if isinstance(max_tokens, int) else 0)
