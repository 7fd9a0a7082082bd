"""`python -m cli ARGS` runs the `fluid` command."""

import sys

from cli.main import main

sys.exit(main())
