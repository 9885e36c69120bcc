"""FleetVL's shared core: every tier may import it; it imports no tier."""

__version__ = "0.1.0"
