"""Running `ansible-test sanity` on the amber.system collection offline, without docker.

ansible-test installs each sanity test's requirements into a virtual environment of its own,
and bootstraps pip there with a get-pip script it downloads from Ansible's CI file server (not
PyPI, so unreachable here). We give it a bootstrap script of our own in its cache: it installs
pip from the interpreter's bundled wheel (ensurepip) and then the packages ansible-test asks for
from PyPI, as get-pip would. ansible-test runs pip with a cleaned environment (PATH and HOME
only), so the PIP_* variables of ours (an index, a certificate) would be lost: they go into the
pip.conf of a HOME of its own in amber's test cache, where its virtual environments persist."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from testing.images import CACHE

REPO = Path(__file__).resolve().parents[1]
COLLECTION = REPO / "ansible" / "ansible_collections" / "amber" / "system"

# The sanity tests that run without docker or a network other than PyPI, and that apply to a
# collection of Python modules (pslint needs PowerShell, shellcheck has nothing to check).
TESTS = ("action-plugin-docs", "ansible-doc", "compile", "empty-init", "ignores", "import",
         "line-endings", "no-assert", "no-get-exception", "no-illegal-filenames",
         "no-smart-quotes", "pep8", "pylint", "replace-urlopen", "runtime-metadata", "shebang",
         "symlinks", "use-argspec-type-path", "use-compat-six", "validate-modules", "yamllint")

BOOTSTRAP = '''\
"""get-pip for ansible-test, offline: pip from the bundled wheel, then the requested packages."""
import ensurepip
import os
import subprocess
import sys

ensurepip.bootstrap(upgrade=True)
# ensurepip points PIP_CONFIG_FILE at /dev/null for itself; the install needs pip's config.
os.environ.pop("PIP_CONFIG_FILE", None)
os.environ.pop("ENSUREPIP_OPTIONS", None)
subprocess.check_call([sys.executable, "-m", "pip", "install", *sys.argv[1:]])
'''


def prepare_home() -> Path:
    home = CACHE / "ansible-test-home"
    cache = home / ".ansible" / "test" / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    for version in ("23_1_2", "24_0"):  # the pip versions of ansible-core 2.15 to 2.17
        script = cache / f"get_pip_{version}.py"
        if not script.exists() or script.read_text() != BOOTSTRAP:
            script.write_text(BOOTSTRAP)
    pip_conf = home / ".config" / "pip" / "pip.conf"
    pip_conf.parent.mkdir(parents=True, exist_ok=True)
    pip_conf.write_text(pip_configuration(os.environ))
    return home


def pip_configuration(environment: dict[str, str] | os._Environ[str]) -> str:
    """pip's PIP_* variables as the [global] section of a pip.conf (PIP_DEFAULT_TIMEOUT →
    default-timeout), and the certificate of SSL_CERT_FILE when PIP_CERT is not set."""
    settings = {key.removeprefix("PIP_").lower().replace("_", "-"): value
                for key, value in environment.items() if key.startswith("PIP_")}
    if "cert" not in settings and environment.get("SSL_CERT_FILE"):
        settings["cert"] = environment["SSL_CERT_FILE"]
    return "[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(settings.items()))


def sanity(*tests: str, python: str = "3.11") -> subprocess.CompletedProcess[str]:
    """ansible-test sanity for the collection (all of TESTS unless named); its result."""
    home = prepare_home()
    argv = ["ansible-test", "sanity", "--color", "no", "--python", python, "--venv"]
    for test in tests or TESTS:
        argv += ["--test", test]
    env = {**os.environ, "HOME": str(home)}
    return subprocess.run(argv, cwd=COLLECTION, env=env, capture_output=True, text=True,
                          timeout=1800)


if __name__ == "__main__":
    result = sanity(*sys.argv[1:])
    print(result.stdout + result.stderr)
    sys.exit(result.returncode)
