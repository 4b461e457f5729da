import sys

from art_fisher.cli import main

sys.exit(main())
