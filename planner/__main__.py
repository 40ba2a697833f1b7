"""`python -m planner` runs the command-line interface."""

import sys

from planner.cli import main

if __name__ == "__main__":
    sys.exit(main())
