"""Gate: who is calling and may they (API key, budget, rate limits), before anything is forwarded."""

from __future__ import annotations

from collections.abc import Awaitable

from gateway.context import RequestContext
from gateway.cost import estimate_input_tokens
from gateway.tenants import Tenants


class Admission:
    """401 for a missing or unknown key, 429 with Retry-After past a rate limit or the day's budget."""

    def __init__(self, tenants: Tenants) -> None:
        self._tenants = tenants

    def enter(self, ctx: RequestContext) -> Awaitable[None] | None:
        tenant = self._tenants.authenticate(ctx.headers)
        if tenant is None:
            return None
        ctx.tenant = tenant
        # The estimate is only needed against a token rate.
        return self._tenants.check(tenant, _expected_tokens(ctx.document) if tenant.tokens_per_minute else 0)


def _expected_tokens(document: object) -> int:
    """The prompt's estimated tokens plus the answer's `max_tokens`, when the request sets one."""
    if not isinstance(document, dict):
        return 0
    max_tokens = document.get("max_tokens")
    return estimate_input_tokens(document) + (max_tokens if isinstance(max_tokens, int) else 0)
