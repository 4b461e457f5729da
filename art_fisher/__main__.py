from art_fisher.cli import main
import sys

sys.exit(main())
