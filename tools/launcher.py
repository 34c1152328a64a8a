#!/usr/bin/python3 -I
"""`amber` on PATH for a checkout: tools/setup links /usr/local/bin/amber to this file. It runs
the checkout's amber with Debian's python3, which has python3-btrfsutil, as the package does;
-I keeps PYTHONPATH and the user's site-packages out, as for any tool that runs as root."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(__file__))),
                                "src"))

from amber.cli import entry

entry()
