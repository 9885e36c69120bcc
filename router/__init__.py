"""Cloud ingress: OpenAI-compatible HTTP + gRPC, SLA resolution, scheduling, dispatch.

Not built yet: see the router issue. Tiers never import each other; they meet on the wire
and in ``fleetvl``.
"""
