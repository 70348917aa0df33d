"""``python -m hmer``: the same command line as the ``hmer`` script."""

import sys

from hmer.cli import main

sys.exit(main())
