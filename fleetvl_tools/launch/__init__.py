"""``fleetvl up`` and ``fleetvl demo``: the whole fleet on one machine.

The launcher starts every tier as its own process through its command line (``fleetvl router
run``, ``fleetvl controller run``, ``fleetvl edge run``, ``ray start`` + ``serve run``), so it
imports no tier package: it writes their config files, waits until each answers, and stops
them all on Ctrl-C.
"""

from fleetvl_tools.launch.config import UpConfig
from fleetvl_tools.launch.main import run_demo, run_up

__all__ = ["UpConfig", "run_demo", "run_up"]
