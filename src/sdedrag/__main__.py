"""``python -m sdedrag`` is the ``sdedrag`` command."""

import sys

from sdedrag.cli import main

sys.exit(main())
