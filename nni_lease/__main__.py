import sys

from nni_lease.cli import main

sys.exit(main())
