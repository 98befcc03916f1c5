"""Stage: who is calling and may they (API key, budget, rate limits), before anything is forwarded."""

from __future__ import annotations

from gateway.context import Reply, RequestContext
from gateway.cost import estimate_input_tokens
from gateway.tenants import Tenants
from gateway.types import Next


class Admission:
    """401 for a missing or unknown key, 429 with Retry-After past a rate limit or the day's budget."""

    def __init__(self, tenants: Tenants) -> None:
        self._tenants = tenants

    async def __call__(self, ctx: RequestContext, call_next: Next) -> Reply:
        tenant = self._tenants.authenticate(ctx.headers)
        if tenant is not None:
            ctx.tenant = tenant
            expected = 0
            if tenant.tokens_per_minute is not None:  # the estimate is only needed against a token rate
                document = ctx.document
                max_tokens = document.get("max_tokens") if isinstance(document, dict) else None
                expected = estimate_input_tokens(document) + (max_tokens if isinstance(max_tokens, int) else 0)
            await self._tenants.admit(tenant, expected)
        return await call_next(ctx)
