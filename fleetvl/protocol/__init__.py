"""Wire types shared by the tiers (pydantic API models, protobuf stubs).

Filled by the router issue.
"""
