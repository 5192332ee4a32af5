"""`python -m server.dataset [options]`: what `autoresearch prepare` runs."""

import sys

from server.dataset.build import main

sys.exit(main())
