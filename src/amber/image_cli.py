"""`amber image ...` verbs (placeholder until the image builder lands)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("image", help="build a bootable immutable Debian image")
    common(p)
