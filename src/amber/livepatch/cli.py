"""`amber livepatch ...` verbs (placeholder until the live patch engine lands)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any


def add_parser(sub: Any, common: Callable[[argparse.ArgumentParser], None]) -> None:
    p = sub.add_parser("livepatch", help="inspect, load and apply kernel live patches")
    common(p)
