"""`python -m server` is the `autoresearch` command."""

import sys

from server.cli import main

sys.exit(main())
