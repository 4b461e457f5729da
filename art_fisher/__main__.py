"""``python -m art_fisher``: the ``art-fisher`` command line."""

import sys

from art_fisher.cli import main

sys.exit(main())
