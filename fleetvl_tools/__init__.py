"""Tools around the tiers: the ``fleetvl`` command, the one-machine launcher (``fleetvl up``),
the synthetic fleet data and its camera faults, checkpoint building and training.

The core (``fleetvl``) imports none of this and no tier; these tools may import both.
"""
