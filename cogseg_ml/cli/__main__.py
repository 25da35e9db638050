"""``python -m cogseg_ml.cli``: the ``cogseg`` command."""

import sys

from cogseg_ml.cli import main

sys.exit(main())
