from nni_lease.cli import main
import sys

sys.exit(main())
