"""`ansible-test sanity` for the amber.system collection (testing/ansible_sanity.py: every sanity
test that runs without docker; the first run fills its virtual environments from PyPI)."""

from __future__ import annotations

import shutil

from testing import ansible_sanity
from tests.conftest import require


def test_ansible_test_sanity_passes() -> None:
    require(shutil.which("ansible-test") is not None, "needs ansible-core (pip install .[test])")
    result = ansible_sanity.sanity()
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-6000:]
