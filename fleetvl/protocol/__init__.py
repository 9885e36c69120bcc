"""Wire types shared by the tiers: the ``fleetvl.v1`` protobuf messages and gRPC stubs.

``fleetvl.proto`` is the source; ``fleetvl_pb2*.py`` are generated and committed
(``python -m fleetvl.protocol.generate``).
"""
