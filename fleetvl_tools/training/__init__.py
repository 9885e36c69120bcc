"""Training the fleet demo models from scratch (needs torch and transformers, nothing else).

``python -m fleetvl_tools.training OUT --preset fleet-edge`` (or ``fleetvl train``); see
:mod:`fleetvl_tools.training.train`.
"""
