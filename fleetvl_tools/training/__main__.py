import sys

from fleetvl_tools.training.train import main

sys.exit(main())
