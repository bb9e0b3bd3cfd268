"""`python -m mcckd ...` is the `mcckd` command."""
import sys

from mcckd.cli import main

sys.exit(main())
