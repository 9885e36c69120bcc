import sys

from fleetvl.training.train import main

sys.exit(main())
