"""Training the fleet demo models from scratch (needs torch and transformers, nothing else).

``python -m fleetvl.training OUT --preset fleet-edge`` (or ``fleetvl train``); see
:mod:`fleetvl.training.train`.
"""
