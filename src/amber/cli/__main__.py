"""`python3 -m amber.cli`: the command line, as the tests run it from a checkout."""

import sys

from amber.cli import main

if __name__ == "__main__":
    sys.exit(main())
