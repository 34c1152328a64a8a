"""amber's Debian package, man page and shell completion, built by tools/ from this checkout:
lintian clean, no test code inside, the man page renders without warnings and documents every
verb and exit code, and the completion offers verbs and snapshot numbers."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from amber import config
from amber.cli import build_parser
from amber.log import ExitCode
from tests.conftest import require
from tools import completion, config_doc, manpage, package
from tools.cli_model import model, verbs

REPO = Path(__file__).resolve().parents[2]
SRC = REPO / "src" / "amber"


@pytest.fixture(scope="module")
def deb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require(shutil.which("dpkg-deb") is not None, "dpkg-deb is missing")
    return package.build(tmp_path_factory.mktemp("dist"))


def deb_files(deb: Path) -> dict[str, str]:
    """Path → mode string of every entry of the package's data."""
    out = subprocess.run(["dpkg-deb", "--contents", str(deb)], check=True, capture_output=True,
                         text=True).stdout
    entries = {}
    for line in out.splitlines():
        fields = line.split()
        entries[fields[5].removeprefix(".")] = fields[0]
    return entries


def field(deb: Path, name: str) -> str:
    return subprocess.run(["dpkg-deb", "--field", str(deb), name], check=True,
                          capture_output=True, text=True).stdout.strip()


# ---- the package ---------------------------------------------------------------------------

def test_lintian_finds_nothing(deb: Path) -> None:
    require(shutil.which("lintian") is not None, "lintian is missing (tools/setup installs it)")
    result = subprocess.run(["lintian", "--pedantic", "--display-info", str(deb)],
                            capture_output=True, text=True)
    tags = [line for line in result.stdout.splitlines() if re.match(r"[EWIPX]: ", line)]
    assert result.returncode == 0 and not tags, result.stdout + result.stderr


def test_package_holds_the_product_and_no_test_code(deb: Path) -> None:
    files = deb_files(deb)
    package_dir = "/usr/lib/python3/dist-packages/amber/"
    shipped = {path.removeprefix(package_dir) for path in files if path.startswith(package_dir)
               and path.endswith(".py")}
    product = {str(p.relative_to(SRC)) for p in SRC.rglob("*.py")}
    assert shipped == product
    assert not [path for path in files if re.search(r"/(tests?|testing)/|vm\.py$|__pycache__|"
                                                    r"\.pyc$|conftest", path)]
    for path in ("/usr/bin/amber", "/usr/share/man/man8/amber.8.gz",
                 "/usr/share/bash-completion/completions/amber",
                 "/usr/share/zsh/vendor-completions/_amber", "/usr/share/doc/amber/copyright",
                 "/usr/share/doc/amber/changelog.gz", "/usr/share/doc/amber/examples/amber.conf",
                 "/usr/lib/systemd/system/amber-update.timer",
                 "/usr/lib/systemd/system/amber-update.service"):
        assert path in files
    assert files["/usr/bin/amber"] == "-rwxr-xr-x"
    assert field(deb, "Version") == package.checkout_version()
    assert field(deb, "Architecture") == "all"
    depends = field(deb, "Depends")
    for name in ("python3 (>= 3.11)", "python3-btrfsutil", "btrfs-progs", "openssl", "kmod",
                 "cpio"):
        assert name in depends
    assert "dracut | initramfs-tools" in field(deb, "Recommends")


def test_launcher_starts_amber_without_pip_machinery(deb: Path, tmp_path: Path) -> None:
    subprocess.run(["dpkg-deb", "--extract", str(deb), str(tmp_path)], check=True)
    launcher = (tmp_path / "usr/bin/amber").read_text()
    assert launcher.startswith("#!/usr/bin/python3 -I\n")
    assert "importlib" not in launcher and "pkg_resources" not in launcher
    # The packaged tree runs: the launcher's code with the packaged modules on sys.path.
    site = tmp_path / "usr/lib/python3/dist-packages"
    result = subprocess.run(["/usr/bin/python3", "-I", "-c",
                             f"import sys; sys.path.insert(0, {str(site)!r}); "
                             f"sys.argv = ['amber', '--version']; exec({launcher!r})"],
                            capture_output=True, text=True)
    assert result.stdout.strip() == f"amber {package.checkout_version()}", result.stderr


def test_package_is_reproducible(deb: Path, tmp_path: Path) -> None:
    again = package.build(tmp_path)
    assert again.read_bytes() == deb.read_bytes()


def test_changelog_must_name_the_checkout_version(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    read = package.read_changelog
    (tmp_path / "bad").write_text("not a changelog\n")
    with pytest.raises(package.PackageError):
        read(tmp_path / "bad")
    changelog = tmp_path / "changelog"
    changelog.write_text((package.PACKAGING / "changelog").read_text()
                         .replace(f"amber ({package.checkout_version()})", "amber (0.0.1)", 1))
    old = read(changelog)
    assert old.version == "0.0.1" and old.epoch > 0 and "<" in old.maintainer
    monkeypatch.setattr(package, "read_changelog", lambda: old)
    with pytest.raises(package.PackageError, match="add a changelog entry"):
        package.build(tmp_path / "dist")
    assert not (tmp_path / "dist").exists()


def test_example_configuration_is_the_defaults() -> None:
    text = config_doc.example_conf()
    assert config.parse(tomllib.loads(text), Path("example")) == config.Config()
    for section in config_doc.sections():
        for key in section.keys:
            assert f"# {key.meaning}\n{key.name} = {key.default}\n" in text


# ---- the man page --------------------------------------------------------------------------

@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("man") / "amber.8"
    path.write_text(manpage.render("0.1.0", "2026-12-02"))
    return path


def rendered(page: Path) -> str:
    require(shutil.which("groff") is not None, "groff is missing (man-db installs groff-base)")
    result = subprocess.run(["groff", "-man", "-Tutf8", "-ww", str(page)], capture_output=True,
                            text=True, env={**os.environ, "LC_ALL": "C.UTF-8"})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    # Plain text: no overstriking, and U+2212 (a minus, if this groff maps \- so) as "-".
    return re.sub(r".\x08", "", result.stdout).replace("\u2212", "-").replace("\u2010", "-")


def test_man_page_renders_without_warnings(page: Path) -> None:
    rendered(page)
    require(shutil.which("man") is not None, "man is missing (man-db)")
    result = subprocess.run(["man", "--warnings", "-E", "UTF-8", "-l", "-Tutf8", "-Z",
                             str(page)], capture_output=True, text=True,
                            env={**os.environ, "LC_ALL": "C.UTF-8", "MANWIDTH": "80"})
    assert result.returncode == 0 and result.stderr == "", result.stderr


def test_man_page_documents_every_verb_option_and_exit_code(page: Path) -> None:
    text = " ".join(rendered(page).split())
    for path, cmd in verbs(model()).items():
        assert f"amber {cmd.name.removeprefix('amber ')}" in text, path
        for option in cmd.options:
            assert option.flags[0] in text, (path, option.flags)
    for code in ExitCode:
        assert re.search(rf"\b{int(code)} [A-Z]", text), code
    for section in config_doc.sections():
        assert f"[{section.name}]" in text
        for key in section.keys:
            assert f"{key.name} = {key.default}" in text
    for name, _ in manpage.ENVIRONMENT:
        assert name in text


def test_every_exit_code_is_described() -> None:
    assert set(manpage.EXIT_STATUS) == {code.name for code in ExitCode}


def test_man_page_examples_parse() -> None:
    for _, command in manpage.EXAMPLES:
        argv = shlex.split(command)
        assert argv[0] == "amber"
        args = build_parser().parse_args(argv[1:])
        assert getattr(args, "handler", None) is not None, command


def test_documented_environment_is_all_amber_reads() -> None:
    documented = {name for name, _ in manpage.ENVIRONMENT}
    read = set()
    for path in SRC.rglob("*.py"):
        read |= set(re.findall(r"\bAMBER_[A-Z_]+\b", path.read_text()))
    assert {name for name in read if not name.startswith("AMBER_TEST")} <= documented


def test_documented_files_are_named_in_the_sources() -> None:
    sources = "\n".join(p.read_text() for p in [*SRC.rglob("*.py"), REPO / "tools/package.py"])
    for path, _ in manpage.FILES:
        if "/N/" not in path:
            assert Path(path).name in sources, path


# ---- completion ----------------------------------------------------------------------------

@pytest.fixture
def system_root(tmp_path: Path) -> Path:
    for number in (1, 2, 3, 10):
        (tmp_path / ".snapshots" / str(number) / "snapshot").mkdir(parents=True)
    (tmp_path / ".snapshots" / "4").mkdir()  # no snapshot inside: an unfinished one
    (tmp_path / ".snapshots" / ".amber.lock").write_text("")
    return tmp_path


def bash_complete(script: Path, *words: str, env: dict[str, str] | None = None) -> list[str]:
    """What the bash completion offers for the command line words (the last is completed)."""
    array = " ".join(shlex.quote(w) for w in words)
    code = (f"source {shlex.quote(str(script))}; COMP_WORDS=({array}); "
            f"COMP_CWORD={len(words) - 1}; _amber; printf '%s\\n' \"${{COMPREPLY[@]}}\"")
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", code], capture_output=True,
                            text=True, env={"PATH": os.environ["PATH"], **(env or {})})
    assert result.returncode == 0 and result.stderr == "", result.stderr
    return [line for line in result.stdout.splitlines() if line]


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "amber"
    path.write_text(completion.bash(model()))
    return path


def test_bash_completes_verbs(bash_script: Path) -> None:
    assert bash_complete(bash_script, "amber", "ro") == ["rollback"]
    offered = bash_complete(bash_script, "amber", "")
    assert {"run", "pkg", "up", "status", "snapshots", "list", "rollback", "delete", "pin",
            "unpin", "diff", "livepatch", "image"} <= set(offered)
    assert bash_complete(bash_script, "amber", "pkg", "") == ["install", "remove", "update"]
    assert "apply" in bash_complete(bash_script, "amber", "livepatch", "")
    assert "--revert-livepatches" in bash_complete(bash_script, "amber", "rollback", "--")
    assert bash_complete(bash_script, "amber", "--ro") == ["--root"]


def test_bash_completes_snapshot_numbers(bash_script: Path, system_root: Path) -> None:
    root = str(system_root)
    assert sorted(bash_complete(bash_script, "amber", "--root", root, "rollback", "")) == \
        ["1", "10", "2", "3", "last"]
    assert sorted(bash_complete(bash_script, "amber", "--root", "=", root, "delete", "1", "")) \
        == ["1", "10", "2", "3"]
    assert bash_complete(bash_script, "amber", "--root", root, "pin", "1") == ["1", "10"]
    assert "booted" in bash_complete(bash_script, "amber", "--root", root, "diff", "1", "")
    assert "3" in bash_complete(bash_script, "amber", "--root", root, "up", "--continue", "")
    # Without --root: $AMBER_ROOT, as amber itself.
    assert sorted(bash_complete(bash_script, "amber", "unpin", "",
                                env={"AMBER_ROOT": root})) == ["1", "10", "2", "3"]
    if "boot-once" in verbs(model()):
        assert "1" in bash_complete(bash_script, "amber", "--root", root, "boot-once", "")


def test_bash_completes_loaded_live_patches(bash_script: Path, tmp_path: Path) -> None:
    for name in ("amber_lp_v1", "amber_lp_v2"):
        (tmp_path / "kernel/livepatch" / name).mkdir(parents=True)
    env = {"AMBER_SYSFS": str(tmp_path)}
    assert bash_complete(bash_script, "amber", "livepatch", "revert", "", env=env) == \
        ["amber_lp_v1", "amber_lp_v2"]
    assert bash_complete(bash_script, "amber", "livepatch", "unload", "amber_lp_v",
                         env=env) == ["amber_lp_v1", "amber_lp_v2"]
    (tmp_path / "kernel/livepatch" / "amber_lp_v1").rmdir()
    (tmp_path / "kernel/livepatch" / "amber_lp_v2").rmdir()
    assert bash_complete(bash_script, "amber", "livepatch", "revert", "", env=env) == []


def test_completion_names_only_verbs_that_exist() -> None:
    offered = set(verbs(model()))
    assert {"rollback", "delete", "pin", "unpin", "diff"} <= set(completion.SNAPSHOT_VERBS)
    assert set(completion.SNAPSHOT_VERBS) - offered <= {"boot-once"}


def zsh_complete(script: Path, line: str, tmp_path: Path) -> set[str]:
    """What zsh's completion system offers for line, typed into an interactive zsh in a pty
    with TAB pressed: compadd is wrapped to record the matches."""
    functions = tmp_path / "functions"
    functions.mkdir(exist_ok=True)
    shutil.copy(script, functions / "_amber")
    out = tmp_path / "matches"
    out.unlink(missing_ok=True)
    driver = tmp_path / "driver.zsh"
    driver.write_text(f"""\
zmodload zsh/zpty
zpty z zsh -f -i
zpty -w z "PS1=''; fpath=({functions} \\$fpath); autoload -Uz compinit; compinit -u -D"
zpty -w z "compadd() {{ builtin compadd -O __m \\"\\$@\\"; print -rl -- \\$__m >> {out};\
 builtin compadd \\"\\$@\\" }}"
zpty -w z "_done() {{ print -- --done-- >> {out} }}; comppostfuncs=(_done)"
zpty -w z {shlex.quote(line)}$'\\t'
for i in {{1..600}}; do grep -q -- --done-- {out} 2>/dev/null && break; sleep 0.1; done
zpty -d z
""")
    subprocess.run(["zsh", "-f", str(driver)], check=True, timeout=120,
                   env={"PATH": os.environ["PATH"], "HOME": str(tmp_path), "TERM": "dumb"})
    matches = set(out.read_text().split("\n"))
    assert "--done--" in matches, f"zsh did not finish completing {line!r}"
    return matches - {"", "--done--"}


def test_zsh_completes_verbs_and_snapshot_numbers(system_root: Path, tmp_path: Path) -> None:
    require(shutil.which("zsh") is not None, "zsh is missing (tools/setup installs it)")
    script = tmp_path / "_amber"
    script.write_text(completion.zsh(model()))
    assert subprocess.run(["zsh", "-n", str(script)]).returncode == 0
    assert zsh_complete(script, "amber ro", tmp_path) == {"rollback"}
    assert zsh_complete(script, f"amber --root {system_root} rollback ", tmp_path) == \
        {"1", "2", "3", "10", "last"}
    assert {"install", "remove", "update"} <= zsh_complete(script, "amber pkg ", tmp_path)
    assert "apply" in zsh_complete(script, "amber livepatch ", tmp_path)
