"""``python -m nni_lease``: the ``nni-lease`` command line."""

import sys

from nni_lease.cli import main

sys.exit(main())
