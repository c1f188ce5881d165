"""`python -m fastblocks.cli ...` (the bench commands re-execute themselves this way)."""
import sys

from . import main

sys.exit(main())
