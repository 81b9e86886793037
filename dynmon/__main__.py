"""``python -m dynmon`` is the ``dynmon`` command."""

import sys

from dynmon.cli import main

sys.exit(main())
