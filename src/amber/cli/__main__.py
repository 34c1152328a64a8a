"""python3 -m amber.cli"""

import sys

from amber.cli import main

sys.exit(main())
