"""The three-way merge of /etc on plain directories: the rules table, the record and line merges
in place, attributes one by one, conflicts stored and recoverable, awkward names and deep trees,
symlinks never followed, failures that leave the new /etc untouched, and properties over random
trees.

Trees are built and read back here with plain os calls, independently of amber's own reader.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from amber.etc import conflicts, diff, syncpoint, writer
from amber.etc.merge import (
    MergeError,
    MergeReport,
    Origin,
    Outcome,
    Reason,
    apply_plan,
    merge,
    merge_into,
    plan_merge,
)
from amber.etc.tree import LazyTree, TreeError, opened_root, read_file, scan
from amber.log import AmberError

ROOT = os.geteuid() == 0
needs_root = pytest.mark.skipif(not ROOT, reason="owners, security.* and devices need root")

# ---- trees as data ---------------------------------------------------------------------------

Xattrs = tuple[tuple[str, bytes], ...]


@dataclass(frozen=True)
class F:
    content: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    xattrs: Xattrs = ()


@dataclass(frozen=True)
class D:
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    xattrs: Xattrs = ()


@dataclass(frozen=True)
class L:
    target: bytes
    uid: int = 0
    gid: int = 0
    xattrs: Xattrs = ()


@dataclass(frozen=True)
class P:
    """A special file."""

    kind: str = "fifo"  # fifo, socket, char
    mode: int = 0o644
    rdev: int = 0
    uid: int = 0
    gid: int = 0
    xattrs: Xattrs = ()


Node = F | D | L | P
Spec = dict[bytes, Node]
_FORMATS = {"fifo": stat.S_IFIFO, "socket": stat.S_IFSOCK, "char": stat.S_IFCHR}


def b(path: str | bytes) -> bytes:
    return path if isinstance(path, bytes) else os.fsencode(path)


def tree_of(items: dict[str | bytes, Node]) -> Spec:
    return {b(path): node for path, node in items.items()}


def changed(base: Spec, changes: dict[str | bytes, Node | None]) -> Spec:
    """base with changes applied; None deletes a path and everything below it."""
    result = dict(base)
    for path, node in changes.items():
        key = b(path)
        if node is None or not isinstance(node, D):
            for existing in [p for p in result if p.startswith(key + b"/")]:
                del result[existing]
        if node is None:
            result.pop(key, None)
        else:
            result[key] = node
    return result


def build(root: Path, tree: Spec) -> Path:
    """Make the tree; a directory's attributes are set after its contents (so a default ACL is
    not inherited by what the tree lists with its own attributes)."""
    os.mkdir(root)
    top = os.fsencode(root)
    ordered = sorted(tree, key=lambda p: p.split(b"/"))
    for path in ordered:
        node, full = tree[path], os.path.join(top, path)
        if isinstance(node, D):
            os.mkdir(full)
            continue
        if isinstance(node, F):
            with open(full, "wb") as f:
                f.write(node.content)
        elif isinstance(node, L):
            os.symlink(node.target, full)
        else:
            os.mknod(full, _FORMATS[node.kind] | 0o600, node.rdev)
        _attributes(full, node)
    for path in reversed(ordered):
        if isinstance(tree[path], D):
            _attributes(os.path.join(top, path), tree[path])
    return root


def _attributes(full: bytes, node: Node) -> None:
    if ROOT and (node.uid, node.gid) != (0, 0):
        os.chown(full, node.uid, node.gid, follow_symlinks=False)
    for name, value in node.xattrs:
        os.setxattr(full, name, value, follow_symlinks=False)
    if not isinstance(node, L):
        os.chmod(full, node.mode)


def read_back(root: Path) -> Spec:
    """The tree as it is on disk (os.walk does not descend into symlinks)."""
    found: Spec = {}
    top = os.fsencode(root)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            found[os.path.relpath(full, top)] = node_at(full)
    return found


def node_at(full: bytes) -> Node:
    st_ = os.lstat(full)
    xattrs = tuple(sorted((n, os.getxattr(full, n, follow_symlinks=False))
                          for n in os.listxattr(full, follow_symlinks=False)))
    mode, owner = stat.S_IMODE(st_.st_mode), (st_.st_uid, st_.st_gid)
    if stat.S_ISDIR(st_.st_mode):
        return D(mode, *owner, xattrs)
    if stat.S_ISREG(st_.st_mode):
        with open(full, "rb") as f:
            return F(f.read(), mode, *owner, xattrs)
    if stat.S_ISLNK(st_.st_mode):
        return L(os.readlink(full), *owner, xattrs)
    kind = next(k for k, fmt in _FORMATS.items() if stat.S_IFMT(st_.st_mode) == fmt)
    return P(kind, mode, st_.st_rdev if kind == "char" else 0, *owner, xattrs)


def below(tree: Spec, path: bytes) -> Spec:
    """path and its subtree, relative to path's parent (as a conflict copy stores them)."""
    return {p: n for p, n in tree.items() if p == path or p.startswith(path + b"/")}


@dataclass
class Trees:
    base: Path
    old: Path
    new: Path
    conflicts: Path
    specs: dict[str, Spec] = field(default_factory=dict)

    def merge(self) -> MergeReport:
        return merge(self.base, self.old, self.new, conflicts_dir=self.conflicts, sync=False)


def make_trees(where: Path, base: Spec, old: Spec, new: Spec) -> Trees:
    where.mkdir(parents=True, exist_ok=True)
    trees = Trees(build(where / "B", base), build(where / "O", old), build(where / "T", new),
                  where / "var" / "etc-merge" / "2")
    trees.specs = {"base": base, "old": old, "new": new}
    return trees


def assert_recoverable(trees: Trees, report: MergeReport) -> None:
    """Every conflict's three versions are stored, exactly (the whole tree where it was a tree),
    and a version that did not exist has no copy."""
    for conflict in report.conflicts:
        for side, copy in (("base", conflict.base), ("old", conflict.old), ("new", conflict.new)):
            original = trees.specs[side]
            if conflict.path not in original:
                assert copy is None
                continue
            assert copy is not None
            stored_root = trees.conflicts / side
            stored = read_back(stored_root)
            wanted = below(original, conflict.path)
            if conflict.reason not in (Reason.DELETE_MODIFY, Reason.TYPE_CHANGE):
                wanted = {conflict.path: original[conflict.path]}
            assert {p: n for p, n in stored.items() if p in wanted} == wanted
            assert Path(copy) == stored_root / os.fsdecode(conflict.path)


# ---- the rules table ---------------------------------------------------------------------------

CONF = b"# foo.conf\nalpha = 1\nbeta = 2\ngamma = 3\ndelta = 4\nepsilon = 5\n"
PASSWD = b"root:x:0:0:root:/root:/bin/bash\nadmin:x:1000:1000::/home/admin:/bin/bash\n"
SHADOW = b"root:!:19000::::::\nadmin:$6$a:19000::::::\n"
GROUP = b"root:x:0:\nadmin:x:1000:\n"

BASE = tree_of({
    "keep": F(b"unchanged\n"),
    "motd": F(b"hello\n"),
    "foo.conf": F(CONF),
    "blob": F(b"\0\1\2\3"),
    "link": L(b"motd"),
    "fifo": P("fifo"),
    "d": D(),
    "d/a": F(b"a\n"),
    "d/b": F(b"b\n"),
    "d/sub": D(0o700),
    "d/sub/c": F(b"c\n"),
    "passwd": F(PASSWD),
    "shadow": F(SHADOW, 0o640),
    "group": F(GROUP),
})

NEW, OLD, MERGED, CONFLICT = Outcome.NEW, Outcome.OLD, Outcome.MERGED, Outcome.CONFLICT
U1 = (("user.one", b"1"),)
U2 = (("user.two", b"2"),)


@dataclass(frozen=True)
class Row:
    name: str
    old: dict[str | bytes, Node | None]
    new: dict[str | bytes, Node | None]
    expected: dict[str | bytes, Node | None]  # changes against BASE
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    reasons: dict[str, Reason] = field(default_factory=dict)
    taken: dict[str, dict[str, Origin]] = field(default_factory=dict)


ROWS = [
    Row("nothing changed", {}, {}, {}),
    Row("edited by the admin only", {"motd": F(b"admin\n")}, {}, {"motd": F(b"admin\n")},
        {"motd": OLD}),
    Row("edited by the package only", {}, {"motd": F(b"pkg\n")}, {"motd": F(b"pkg\n")}),
    Row("the same edit on both sides", {"motd": F(b"x\n")}, {"motd": F(b"x\n")},
        {"motd": F(b"x\n")}, {"motd": NEW}),
    Row("added by the admin", {"admin.conf": F(b"mine\n", 0o600)}, {},
        {"admin.conf": F(b"mine\n", 0o600)}, {"admin.conf": OLD}),
    Row("added by the package", {}, {"pkg.conf": F(b"pkg\n")}, {"pkg.conf": F(b"pkg\n")}),
    Row("a directory tree added by the admin", {"conf.d": D(), "conf.d/x": F(b"x\n"),
                                                "conf.d/y": D(), "conf.d/y/z": L(b"../x")}, {},
        {"conf.d": D(), "conf.d/x": F(b"x\n"), "conf.d/y": D(), "conf.d/y/z": L(b"../x")},
        {"conf.d": OLD}),
    Row("deleted by the admin", {"motd": None}, {}, {"motd": None}, {"motd": OLD}),
    Row("deleted by the package", {}, {"motd": None}, {"motd": None}),
    Row("deleted on both sides", {"motd": None}, {"motd": None}, {"motd": None}, {"motd": NEW}),
    Row("deleted by the admin, edited by the package", {"motd": None}, {"motd": F(b"pkg\n")},
        {"motd": None}, {"motd": CONFLICT}, {"motd": Reason.DELETE_MODIFY}),
    Row("deleted by the package, edited by the admin", {"motd": F(b"admin\n")}, {"motd": None},
        {"motd": F(b"admin\n")}, {"motd": CONFLICT}, {"motd": Reason.DELETE_MODIFY}),
    Row("a file the package turned into a symlink", {}, {"motd": L(b"/run/motd")},
        {"motd": L(b"/run/motd")}),
    Row("a file the admin turned into a directory", {"motd": D(), "motd/1": F(b"1\n")}, {},
        {"motd": D(), "motd/1": F(b"1\n")}, {"motd": OLD}),
    Row("a type change against an edit", {"motd": F(b"admin\n")}, {"motd": L(b"/run/motd")},
        {"motd": F(b"admin\n")}, {"motd": CONFLICT}, {"motd": Reason.TYPE_CHANGE}),
    Row("both added a different type", {"new": F(b"file\n")}, {"new": D()},
        {"new": F(b"file\n")}, {"new": CONFLICT}, {"new": Reason.TYPE_CHANGE}),
    Row("a directory the package removed, the admin added to",
        {"d/mine": F(b"mine\n")}, {"d": None}, {"d/mine": F(b"mine\n")},
        {"d": CONFLICT}, {"d": Reason.DELETE_MODIFY}),
    Row("a directory the admin removed, the package changed below",
        {"d": None}, {"d/sub/c": F(b"C\n")}, {"d": None}, {"d": CONFLICT},
        {"d": Reason.DELETE_MODIFY}),
    Row("a directory the package removed, unchanged below by the admin", {}, {"d": None},
        {"d": None}),
    Row("a directory the package removed, the admin deleted in it", {"d/a": None, "d/sub": None},
        {"d": None}, {"d": None}, {"d": NEW}),
    Row("a directory the admin removed, the package deleted in it", {"d": None},
        {"d/sub": None}, {"d": None}, {"d": OLD}),
    Row("a directory the admin replaced by a file", {"d": F(b"flat\n")}, {},
        {"d": F(b"flat\n")}, {"d": OLD}),
    Row("a directory the package replaced by a symlink, the admin edited below",
        {"d/a": F(b"A\n")}, {"d": L(b"/usr/share/d")}, {"d/a": F(b"A\n")}, {"d": CONFLICT},
        {"d": Reason.TYPE_CHANGE}),
    Row("mode by the admin, contents by the package", {"motd": F(b"hello\n", 0o600)},
        {"motd": F(b"pkg\n")}, {"motd": F(b"pkg\n", 0o600)}, {"motd": MERGED},
        taken={"motd": {"mode": Origin.OLD, "content": Origin.NEW}}),
    Row("an extended attribute on each side", {"motd": F(b"hello\n", xattrs=U1)},
        {"motd": F(b"hello\n", xattrs=U2)}, {"motd": F(b"hello\n", xattrs=U1 + U2)},
        {"motd": MERGED},
        taken={"motd": {"xattr:user.one": Origin.OLD, "xattr:user.two": Origin.NEW}}),
    Row("the same extended attribute set differently",
        {"motd": F(b"hello\n", xattrs=(("user.one", b"mine"),))},
        {"motd": F(b"pkg\n", xattrs=(("user.one", b"theirs"),))},
        {"motd": F(b"hello\n", xattrs=(("user.one", b"mine"),))}, {"motd": CONFLICT},
        {"motd": Reason.ATTRIBUTE}),
    Row("the mode changed differently", {"motd": F(b"hello\n", 0o600)},
        {"motd": F(b"hello\n", 0o640)}, {"motd": F(b"hello\n", 0o600)}, {"motd": CONFLICT},
        {"motd": Reason.ATTRIBUTE}),
    Row("text edited at different places",
        {"foo.conf": F(CONF.replace(b"alpha = 1", b"alpha = 10"))},
        {"foo.conf": F(CONF.replace(b"delta = 4", b"delta = 40"))},
        {"foo.conf": F(CONF.replace(b"alpha = 1", b"alpha = 10")
                       .replace(b"delta = 4", b"delta = 40"))}, {"foo.conf": MERGED},
        taken={"foo.conf": {"content": Origin.LINES}}),
    Row("text edited at the same place",
        {"foo.conf": F(CONF.replace(b"beta = 2", b"beta = 20"))},
        {"foo.conf": F(CONF.replace(b"beta = 2", b"beta = 21"))},
        {"foo.conf": F(CONF.replace(b"beta = 2", b"beta = 20"))}, {"foo.conf": CONFLICT},
        {"foo.conf": Reason.CONTENT}),
    Row("binary contents on both sides", {"blob": F(b"\0mine")}, {"blob": F(b"\0theirs")},
        {"blob": F(b"\0mine")}, {"blob": CONFLICT}, {"blob": Reason.CONTENT}),
    Row("a symlink retargeted differently", {"link": L(b"mine")}, {"link": L(b"theirs")},
        {"link": L(b"mine")}, {"link": CONFLICT}, {"link": Reason.CONTENT}),
    Row("a symlink retargeted by the admin, deleted by the package", {"link": L(b"mine")},
        {"link": None}, {"link": L(b"mine")}, {"link": CONFLICT},
        {"link": Reason.DELETE_MODIFY}),
    Row("a fifo's mode changed by the admin", {"fifo": P(mode=0o600)}, {},
        {"fifo": P(mode=0o600)}, {"fifo": OLD}),
    Row("a fifo changed on both sides", {"fifo": P(mode=0o600)}, {"fifo": P(mode=0o640)},
        {"fifo": P(mode=0o600)}, {"fifo": CONFLICT}, {"fifo": Reason.SPECIAL_FILE}),
    Row("a socket added by the admin", {"sock": P("socket", 0o660)}, {},
        {"sock": P("socket", 0o660)}, {"sock": OLD}),
    Row("the root password changed while a package adds a user",
        {"shadow": F(SHADOW.replace(b"root:!", b"root:$6$new"), 0o640)},
        {"passwd": F(PASSWD + b"_pkg:x:999:999::/:/usr/sbin/nologin\n"),
         "shadow": F(SHADOW + b"_pkg:!:19600::::::\n", 0o640)},
        {"passwd": F(PASSWD + b"_pkg:x:999:999::/:/usr/sbin/nologin\n"),
         "shadow": F(SHADOW.replace(b"root:!", b"root:$6$new") + b"_pkg:!:19600::::::\n",
                     0o640)},
        {"shadow": MERGED}, taken={"shadow": {"content": Origin.RECORDS}}),
    Row("users added on both sides", {"passwd": F(PASSWD + b"alice:x:1001:1001::/:/bin/sh\n")},
        {"passwd": F(PASSWD + b"_pkg:x:999:999::/:/usr/sbin/nologin\n")},
        {"passwd": F(PASSWD + b"_pkg:x:999:999::/:/usr/sbin/nologin\n"
                     b"alice:x:1001:1001::/:/bin/sh\n")}, {"passwd": MERGED}),
    Row("one gid given to two groups", {"group": F(GROUP + b"mine:x:1001:\n")},
        {"group": F(GROUP + b"theirs:x:1001:\n")}, {"group": F(GROUP + b"mine:x:1001:\n")},
        {"group": CONFLICT}, {"group": Reason.CONTENT}),
    Row("added on both sides with different contents", {"new.conf": F(b"mine\n")},
        {"new.conf": F(b"theirs\n")}, {"new.conf": F(b"mine\n")}, {"new.conf": CONFLICT},
        {"new.conf": Reason.CONTENT}),
    Row("a directory's mode by the admin, a file in it by the package", {"d": D(0o750)},
        {"d/new": F(b"new\n")}, {"d": D(0o750), "d/new": F(b"new\n")}, {"d": OLD}),
    Row("a directory's mode in conflict, its contents still merged",
        {"d": D(0o700), "d/a": F(b"A\n")}, {"d": D(0o750), "d/b": F(b"B\n")},
        {"d": D(0o700), "d/a": F(b"A\n"), "d/b": F(b"B\n")},
        {"d": CONFLICT, "d/a": OLD}, {"d": Reason.ATTRIBUTE}),
]


def run_row(tmp_path: Path, base: Spec, row: Row) -> None:
    trees = make_trees(tmp_path, base, changed(base, row.old), changed(base, row.new))
    report = trees.merge()
    assert read_back(trees.new) == changed(base, row.expected)
    assert {os.fsdecode(r.path): r.outcome for r in report.results} == row.outcomes
    assert {os.fsdecode(c.path): c.reason for c in report.conflicts} == row.reasons
    for path, taken in row.taken.items():
        result = next(r for r in report.results if r.path == b(path))
        assert dict(result.taken) == taken
    assert read_back(trees.old) == trees.specs["old"]  # the running /etc is only read
    assert read_back(trees.base) == trees.specs["base"]
    assert_recoverable(trees, report)
    assert sorted(os.listdir(tmp_path)) == ["B", "O", "T"] + (["var"] if row.reasons else [])


@pytest.mark.parametrize("row", ROWS, ids=[row.name for row in ROWS])
def test_rules(tmp_path: Path, row: Row) -> None:
    run_row(tmp_path, BASE, row)


# Rows that need root: owners, security.selinux, ACLs, device nodes.
SELINUX_ETC = (("security.selinux", b"system_u:object_r:etc_t:s0\0"),)
SELINUX_NEW = (("security.selinux", b"system_u:object_r:locale_t:s0\0"),)


def acl(*entries: tuple[int, int, int]) -> bytes:
    """A POSIX ACL as the kernel stores it in system.posix_acl_*: version 2, (tag, perm, id)."""
    return struct.pack("<I", 2) + b"".join(struct.pack("<HHI", *e) for e in entries)


UNDEFINED = 0xFFFFFFFF
ACL_ADMIN = acl((0x01, 6, UNDEFINED), (0x02, 6, 1000), (0x04, 4, UNDEFINED),
                (0x10, 6, UNDEFINED), (0x20, 4, UNDEFINED))  # user::rw- user:1000:rw- group::r--
#                                                              mask::rw- other::r--
ACCESS = (("system.posix_acl_access", ACL_ADMIN),)
DEFAULT = (("system.posix_acl_default", ACL_ADMIN),)

ROOT_BASE = changed(BASE, {"motd": F(b"hello\n", xattrs=SELINUX_ETC)})
ROOT_ROWS = [
    Row("owner by the admin, contents by the package", {"motd": F(b"hello\n", 0o644, 1000, 1000,
                                                                 SELINUX_ETC)},
        {"motd": F(b"pkg\n", xattrs=SELINUX_ETC)},
        {"motd": F(b"pkg\n", 0o644, 1000, 1000, SELINUX_ETC)}, {"motd": MERGED},
        taken={"motd": {"uid": Origin.OLD, "gid": Origin.OLD, "content": Origin.NEW}}),
    Row("the owner changed differently", {"motd": F(b"hello\n", 0o644, 1000, 0, SELINUX_ETC)},
        {"motd": F(b"hello\n", 0o644, 1001, 0, SELINUX_ETC)},
        {"motd": F(b"hello\n", 0o644, 1000, 0, SELINUX_ETC)}, {"motd": CONFLICT},
        {"motd": Reason.ATTRIBUTE}),
    Row("edited by the admin, relabelled by the package",
        {"motd": F(b"admin\n", xattrs=SELINUX_ETC)}, {"motd": F(b"hello\n", xattrs=SELINUX_NEW)},
        {"motd": F(b"admin\n", xattrs=SELINUX_NEW)}, {"motd": MERGED},
        taken={"motd": {"content": Origin.OLD, "xattr:security.selinux": Origin.NEW}}),
    Row("an access ACL by the admin, contents by the package",
        {"motd": F(b"hello\n", 0o664, xattrs=SELINUX_ETC + ACCESS)},
        {"motd": F(b"pkg\n", xattrs=SELINUX_ETC)},
        {"motd": F(b"pkg\n", 0o664, xattrs=SELINUX_ETC + ACCESS)}, {"motd": MERGED}),
    Row("a default ACL by the package, a mode by the admin", {"d": D(0o750)},
        {"d": D(xattrs=DEFAULT)}, {"d": D(0o750, xattrs=DEFAULT)}, {"d": MERGED}),
    Row("a device node added by the admin", {"null": P("char", 0o666, os.makedev(1, 3))}, {},
        {"null": P("char", 0o666, os.makedev(1, 3))}, {"null": OLD}),
    Row("a symlink's owner by the admin, its target by the package",
        {"link": L(b"motd", 1000, 1000)}, {"link": L(b"keep")}, {"link": L(b"keep", 1000, 1000)},
        {"link": MERGED}),
]


@needs_root
@pytest.mark.parametrize("row", ROOT_ROWS, ids=[row.name for row in ROOT_ROWS])
def test_rules_for_owners_labels_acls_and_devices(tmp_path: Path, row: Row) -> None:
    run_row(tmp_path, ROOT_BASE, row)


# ---- conflicts ---------------------------------------------------------------------------------


def test_conflicts_are_stored_with_a_manifest_and_loaded_back(tmp_path: Path) -> None:
    old = changed(BASE, {"motd": None, "foo.conf": F(CONF + b"mine\n")})
    new = changed(BASE, {"motd": F(b"pkg\n"), "foo.conf": F(CONF + b"theirs\n")})
    trees = make_trees(tmp_path, BASE, old, new)
    report = trees.merge()
    assert stat.S_IMODE(os.stat(trees.conflicts).st_mode) == 0o700
    manifest = json.loads((trees.conflicts / "conflicts.json").read_text())
    assert [c["path"] for c in manifest["conflicts"]] == ["foo.conf", "motd"]
    motd = next(c for c in manifest["conflicts"] if c["path"] == "motd")
    assert motd["old"] is None and motd["base"] == "base/motd" and motd["new"] == "new/motd"
    assert conflicts.load(trees.conflicts) == report.conflicts
    assert (trees.conflicts / "new" / "motd").read_bytes() == b"pkg\n"
    assert report.conflicts[1].to_json() == {
        "path": "motd", "reason": "delete-modify",
        "detail": "a file: the running system deleted it, the new snapshot changed it",
        "base": str(trees.conflicts / "base/motd"), "old": None,
        "new": str(trees.conflicts / "new/motd")}


def test_an_earlier_conflicts_directory_is_kept(tmp_path: Path) -> None:
    trees = make_trees(tmp_path, BASE, changed(BASE, {"motd": F(b"a\n")}),
                       changed(BASE, {"motd": F(b"b\n")}))
    trees.conflicts.mkdir(parents=True)
    (trees.conflicts / "conflicts.json").write_text('{"version": 1, "conflicts": []}')
    (trees.conflicts.parent / "2.previous-1").mkdir()
    trees.merge()
    assert (trees.conflicts.parent / "2.previous-2" / "conflicts.json").exists()
    assert len(conflicts.load(trees.conflicts)) == 1
    assert conflicts.load(tmp_path / "nothing") == ()


def test_no_conflict_writes_nothing(tmp_path: Path) -> None:
    trees = make_trees(tmp_path, BASE, changed(BASE, {"motd": F(b"a\n")}), BASE)
    trees.merge()
    assert not trees.conflicts.parent.exists()


# ---- names, depth, symlinks ----------------------------------------------------------------

AWKWARD = [b"with space", b"new\nline", b"\xff\xfe-latin1-\xe9", b"-", b" ", b"\\n",
           b"\xe2\x98\x83"]


def test_awkward_names(tmp_path: Path) -> None:
    base: Spec = {name: F(b"base\n") for name in AWKWARD}
    base[b"dir\n"] = D()
    base.update({b"dir\n/" + name: F(b"deep\n") for name in AWKWARD})
    old = changed(base, {AWKWARD[0]: F(b"mine\n"), AWKWARD[1]: None, AWKWARD[2]: F(b"mine\n"),
                         b"dir\n/" + AWKWARD[2]: F(b"mine\n"), b"added\xff": F(b"x\n")})
    new = changed(base, {AWKWARD[3]: F(b"theirs\n"), AWKWARD[2]: F(b"theirs\n"),
                         b"dir\n/\xe2\x98\x83": L(b"\xff")})
    trees = make_trees(tmp_path, base, old, new)
    report = trees.merge()
    expected = changed(base, {AWKWARD[0]: F(b"mine\n"), AWKWARD[1]: None,
                              AWKWARD[2]: F(b"mine\n"), b"dir\n/" + AWKWARD[2]: F(b"mine\n"),
                              b"added\xff": F(b"x\n"), AWKWARD[3]: F(b"theirs\n"),
                              b"dir\n/\xe2\x98\x83": L(b"\xff")})
    assert read_back(trees.new) == expected
    assert [c.path for c in report.conflicts] == [AWKWARD[2]]
    assert_recoverable(trees, report)
    document = json.loads(json.dumps(report.to_json()))
    assert {os.fsencode(r["path"]) for r in document["results"]} == {
        AWKWARD[0], AWKWARD[1], AWKWARD[2], b"added\xff", b"dir\n/" + AWKWARD[2]}


def deep_path(levels: int, width: int) -> bytes:
    return b"/".join(b"%03d" % i + b"d" * (width - 3) for i in range(levels))


def test_a_tree_deeper_than_path_max(tmp_path: Path) -> None:
    deep = deep_path(50, 120)  # 6,000 bytes: beyond PATH_MAX (4,096)
    assert len(deep) > 4096
    trees = make_trees(tmp_path, {}, {}, {})
    for root in (trees.base, trees.old, trees.new):
        fd = os.open(root, os.O_RDONLY)
        for component in deep.split(b"/"):
            os.mkdir(component, dir_fd=fd)
            child = os.open(component, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        for name, content in ((b"old-edits", b"base"), (b"new-edits", b"base"),
                              (b"both", b"1\n2\n3\n4\n")):
            data = content
            if root == trees.old:
                data = {b"old-edits": b"admin", b"both": b"one\n2\n3\n4\n"}.get(name, content)
            if root == trees.new:
                data = {b"new-edits": b"pkg", b"both": b"1\n2\n3\nfour\n"}.get(name, content)
            with open(os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd), "wb") as f:
                f.write(data)
        os.close(fd)
    report = trees.merge()
    outcomes = {r.path.rpartition(b"/")[2]: r.outcome for r in report.results}
    assert outcomes == {b"old-edits": OLD, b"both": MERGED}
    result = scan(trees.new)
    assert len(result) == 53
    merged = next(path for path in result if path.endswith(b"/both"))
    with opened_root(trees.new) as fd:
        assert read_file(fd, merged) == b"one\n2\n3\nfour\n"
        assert read_file(fd, deep + b"/old-edits") == b"admin"


def test_a_long_chain_of_directories(tmp_path: Path) -> None:
    chain = b"/".join([b"x"] * 400)
    base: Spec = {b"/".join([b"x"] * i): D() for i in range(1, 401)}
    base[chain + b"/f"] = F(b"f\n")
    trees = make_trees(tmp_path, base, changed(base, {chain + b"/f": F(b"admin\n")}),
                       changed(base, {chain + b"/g": F(b"pkg\n")}))
    trees.merge()
    assert read_back(trees.new)[chain + b"/f"] == F(b"admin\n")
    assert read_back(trees.new)[chain + b"/g"] == F(b"pkg\n")


def test_symlinks_are_never_followed(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    build(outside, tree_of({"secret": F(b"secret\n", 0o600), "dir": D(), "dir/x": F(b"x\n")}))
    before = read_back(outside)
    out = os.fsencode(outside)
    base = tree_of({"d": D(), "d/a": F(b"a\n"), "ln": L(out), "lnfile": L(out + b"/secret")})
    # The package replaces the directory d by a symlink out of the tree, the admin edits below
    # it (a conflict: the admin's directory must be put back, not written through the link);
    # the admin retargets the symlinks, the package makes real entries of them.
    old = changed(base, {"d/a": F(b"admin\n"), "ln": L(out + b"/dir")})
    new = changed(base, {"d": L(out), "lnfile": F(b"pkg\n")})
    trees = make_trees(tmp_path / "t", base, old, new)
    assert set(scan(trees.base)) == {b"d", b"d/a", b"ln", b"lnfile"}
    report = trees.merge()
    assert {c.path: c.reason for c in report.conflicts} == {b"d": Reason.TYPE_CHANGE}
    result = read_back(trees.new)
    assert result[b"d"] == D() and result[b"d/a"] == F(b"admin\n")
    assert result[b"ln"] == L(out + b"/dir") and result[b"lnfile"] == F(b"pkg\n")
    assert read_back(outside) == before
    assert not (outside / "a").exists()


def test_the_new_tree_is_read_lazily_without_following_symlinks(tmp_path: Path) -> None:
    outside = build(tmp_path / "outside", tree_of({"a": F(b"outside\n"), "sub": D()}))
    root = build(tmp_path / "T", tree_of({"d": L(os.fsencode(outside)), "e": D(),
                                          "e/f": F(b"f\n"), "etc.syncpoint": D()}))
    lazy = LazyTree(root, ignore=syncpoint.IGNORED)
    assert lazy.get(b"d") == scan(root)[b"d"]
    assert lazy.get(b"d/a") is None  # below a symlink: not a path of this tree
    assert lazy.get(b"d/sub/x") is None
    assert lazy.get(b"e/f/g") is None  # below a file
    assert lazy.get(b"missing") is None
    assert lazy.get(b"etc.syncpoint") is None
    assert lazy.subtree(b"d") == {b"d": scan(root)[b"d"]}
    assert lazy.subtree(b"e") == {p: e for p, e in scan(root).items() if p in (b"e", b"e/f")}


def test_a_result_directory_that_is_not_a_copy_of_new_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    trees = make_trees(tmp_path / "t", BASE, changed(BASE, {"d/a": F(b"admin\n")}), BASE)
    plan = plan_merge(trees.base, trees.old, trees.new)
    result = tmp_path / "result"
    writer.copy_tree(trees.new, scan(trees.new), result)
    os.rename(result / "d", result / "d.real")
    os.symlink(outside, result / "d")  # a symlink where the plan expects the directory d
    with pytest.raises(MergeError, match="not the new /etc's") as e:
        apply_plan(plan, result)
    assert e.value.hint == "the result directory must start as a copy of the new /etc"
    assert list(outside.iterdir()) == []


def test_reading_does_not_change_access_times(tmp_path: Path) -> None:
    trees = make_trees(tmp_path, BASE, changed(BASE, {"motd": F(b"admin\n")}),
                       changed(BASE, {"foo.conf": F(CONF + b"x\n")}))
    paths = [os.path.join(os.fsencode(root), path)  # readlink(2) always touches a symlink
             for root in (trees.base, trees.old) for path, node in read_back(root).items()
             if not isinstance(node, L)]
    for path in paths:  # an atime older than the mtime: relatime would update it on a read
        os.utime(path, (1_000_000, 2_000_000), follow_symlinks=False)
    trees.merge()
    for path in paths:
        assert os.lstat(path).st_atime == 1_000_000, path


# ---- the swap contract and failures ---------------------------------------------------------


def test_merge_into_a_copy_leaves_new_untouched_until_the_swap(tmp_path: Path) -> None:
    old = changed(BASE, {"motd": F(b"admin\n"), "foo.conf": F(CONF + b"mine\n")})
    new = changed(BASE, {"keep": F(b"pkg\n"), "foo.conf": F(CONF + b"theirs\n")})
    trees = make_trees(tmp_path, BASE, old, new)
    copy = tmp_path / "T.next"
    writer.copy_tree(trees.new, scan(trees.new), copy)
    assert read_back(copy) == new
    report = merge_into(trees.base, trees.old, trees.new, copy, conflicts_dir=trees.conflicts)
    assert read_back(trees.new) == new
    assert read_back(copy) == changed(new, {"motd": F(b"admin\n"), "foo.conf": F(CONF + b"mine\n")})
    assert [c.path for c in report.conflicts] == [b"foo.conf"]
    writer.exchange(trees.new, copy)
    assert read_back(trees.new)[b"motd"] == F(b"admin\n")
    assert read_back(copy) == new


def test_syncpoint_names_are_left_alone(tmp_path: Path) -> None:
    base = changed(BASE, {"transactional-update.comparewith": F(b"7\n")})
    new = changed(BASE, {"etc.syncpoint": D(), "etc.syncpoint/motd": F(b"hello\n"),
                         "motd": F(b"pkg\n")})
    old = changed(BASE, {"etc.syncpoint": D(0o700), "keep": F(b"admin\n")})
    trees = make_trees(tmp_path, base, old, new)
    report = trees.merge()
    assert read_back(trees.new) == changed(new, {"keep": F(b"admin\n")})
    assert {r.path for r in report.results} == {b"keep"}


def test_pending_sync(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    assert syncpoint.pending_sync(etc) is None
    (etc / "etc.syncpoint").mkdir()
    with pytest.raises(AmberError, match=r"has no transactional-update\.comparewith"):
        syncpoint.pending_sync(etc)
    (etc / "etc.syncpoint" / "transactional-update.comparewith").write_text("junk\n")
    with pytest.raises(AmberError, match="not a snapshot number"):
        syncpoint.pending_sync(etc)
    (etc / "etc.syncpoint" / "transactional-update.comparewith").write_text("41\n")
    assert syncpoint.pending_sync(etc) == syncpoint.PendingSync(etc / "etc.syncpoint", 41)


class Boom(Exception):
    pass


def failing_trees(tmp_path: Path) -> Trees:
    old = changed(BASE, {"motd": F(b"admin\n"), "d/a": F(b"A\n"), "conf.d": D(),
                         "conf.d/x": F(b"x\n"), "foo.conf": F(CONF + b"mine\n")})
    new = changed(BASE, {"keep": F(b"pkg\n"), "foo.conf": F(CONF + b"theirs\n")})
    return make_trees(tmp_path, BASE, old, new)


def assert_untouched(trees: Trees, tmp_path: Path) -> None:
    assert read_back(trees.new) == trees.specs["new"]
    assert read_back(trees.old) == trees.specs["old"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["B", "O", "T"]


def test_a_failure_midway_leaves_new_untouched(tmp_path: Path) -> None:
    trees = failing_trees(tmp_path)
    seen: list[bytes] = []

    def fail_on_third(path: bytes) -> None:
        seen.append(path)
        if len(seen) == 3:
            raise Boom

    with pytest.raises(Boom):
        merge(trees.base, trees.old, trees.new, conflicts_dir=trees.conflicts,
              progress=fail_on_third)
    assert_untouched(trees, tmp_path)


def test_the_running_etc_changing_during_the_merge_aborts_it(tmp_path: Path) -> None:
    trees = failing_trees(tmp_path)

    def admin_edits(path: bytes) -> None:
        if path == b"conf.d":
            (trees.old / "conf.d" / "x").write_bytes(b"edited meanwhile\n")

    with pytest.raises(TreeError, match="changed during the merge"):
        merge(trees.base, trees.old, trees.new, conflicts_dir=trees.conflicts,
              progress=admin_edits)
    trees.specs["old"] = changed(trees.specs["old"], {"conf.d/x": F(b"edited meanwhile\n")})
    assert_untouched(trees, tmp_path)


def test_conflicts_that_cannot_be_stored_abort_the_merge(tmp_path: Path) -> None:
    trees = failing_trees(tmp_path)
    blocker = tmp_path / "var"
    blocker.write_text("a file where the conflicts directory's parent should be\n")
    with pytest.raises(TreeError, match="cannot store the merge's conflicts") as e:
        trees.merge()
    assert e.value.hint is not None and "not swapped in" in e.value.hint
    blocker.unlink()
    assert_untouched(trees, tmp_path)


@needs_root
def test_a_read_only_target_leaves_new_untouched(tmp_path: Path) -> None:
    """A file of the new /etc that refuses to be replaced (immutable, as chattr +i makes it):
    the merge fails in the copy, and the new /etc is as it was."""
    import fcntl

    trees = failing_trees(tmp_path)
    keep_dir = tmp_path / "T.next"
    writer.copy_tree(trees.new, scan(trees.new), keep_dir)
    fs_ioc_setflags, immutable = 0x40086602, 0x10
    fd = os.open(keep_dir / "motd", os.O_RDONLY)
    try:
        fcntl.ioctl(fd, fs_ioc_setflags, struct.pack("l", immutable))
    except OSError as e:
        os.close(fd)
        pytest.skip(f"no immutable flag here: {e}")
    try:
        with pytest.raises(MergeError, match="failed"):
            merge_into(trees.base, trees.old, trees.new, keep_dir, conflicts_dir=trees.conflicts)
        assert read_back(trees.new) == trees.specs["new"]
        assert not trees.conflicts.exists()
    finally:
        fcntl.ioctl(fd, fs_ioc_setflags, struct.pack("l", 0))
        os.close(fd)


def test_bad_input_is_one_line_with_a_hint(tmp_path: Path) -> None:
    trees = make_trees(tmp_path, BASE, BASE, BASE)
    with pytest.raises(TreeError, match=r"cannot open .*missing as a directory") as e:
        merge(tmp_path / "missing", trees.old, trees.new, conflicts_dir=trees.conflicts)
    assert e.value.hint and "\n" not in e.value.message
    os.symlink(trees.base, tmp_path / "link")
    with pytest.raises(TreeError, match="cannot open"):
        merge(tmp_path / "link", trees.old, trees.new, conflicts_dir=trees.conflicts)


def test_nothing_to_merge_touches_nothing(tmp_path: Path) -> None:
    trees = make_trees(tmp_path, BASE, BASE, changed(BASE, {"motd": F(b"pkg\n")}))
    inode = os.stat(trees.new).st_ino
    report = trees.merge()
    assert os.stat(trees.new).st_ino == inode
    assert report.results == ()


# ---- diff ------------------------------------------------------------------------------------


def test_diff(tmp_path: Path) -> None:
    current = changed(BASE, {"motd": F(b"x\n", 0o600), "d/sub": None, "new": L(b"motd"),
                             "link": L(b"keep"), "fifo": F(b"now a file\n"),
                             "keep": F(b"unchanged\n", xattrs=U1)})
    build(tmp_path / "ref", BASE)
    build(tmp_path / "cur", current)
    changes = diff.to_json(diff.diff(tmp_path / "ref", tmp_path / "cur"))
    assert changes == [
        {"path": "d/sub", "change": "removed", "type": "dir"},
        {"path": "d/sub/c", "change": "removed", "type": "file"},
        {"path": "fifo", "change": "modified", "type": "file", "attributes": ["type"]},
        {"path": "keep", "change": "modified", "type": "file",
         "attributes": ["xattr:user.one"]},
        {"path": "link", "change": "modified", "type": "symlink", "attributes": ["target"]},
        {"path": "motd", "change": "modified", "type": "file", "attributes": ["content", "mode"]},
        {"path": "new", "change": "added", "type": "symlink"},
    ]
    assert diff.diff(tmp_path / "ref", tmp_path / "ref") == ()


# ---- properties over random trees -------------------------------------------------------------

NAMES = [b"a", b"b c", b"\xff"]
LINES = [b"x\n", b"y\n", b"z\n"]
contents = st.lists(st.sampled_from(LINES), max_size=4).map(b"".join)
xattr_sets = st.sampled_from([(), U1, (("user.one", b"other"),)])
files = st.builds(F, contents, st.sampled_from([0o644, 0o600]), xattrs=xattr_sets)
leaves = st.one_of(files, st.builds(L, st.sampled_from([b"a", b"../b c", b"/etc/x"])),
                   st.builds(P, st.just("fifo"), st.sampled_from([0o644, 0o600])))
dirs = st.builds(D, st.sampled_from([0o755, 0o700]), xattrs=xattr_sets)


@st.composite
def trees_strategy(draw: st.DrawFn, depth: int = 2) -> Spec:
    tree: Spec = {}
    for name in NAMES:
        choice = draw(st.sampled_from(["none", "leaf", "dir"] if depth else ["none", "leaf"]))
        if choice == "leaf":
            tree[name] = draw(leaves)
        elif choice == "dir":
            tree[name] = draw(dirs)
            tree.update({name + b"/" + p: n for p, n in draw(trees_strategy(depth - 1)).items()})
    return tree


TWEAKS = ["tweak"] * 5


@st.composite
def mutated(draw: st.DrawFn, base: Spec, targets: list[bytes], tweaks_only: bool = False) -> Spec:
    """base with random changes at some of the target paths: edits, attribute changes,
    deletions, type changes and additions. Both sides draw from the same targets, so that they
    often change the same paths."""
    tree = dict(base)
    for path in targets:
        parent = path.rpartition(b"/")[0]
        if parent and not isinstance(tree.get(parent), D):
            continue
        node = tree.get(path)
        actions = ["keep", "tweak"] if tweaks_only else ["keep", "delete", "replace", *TWEAKS]
        action = draw(st.sampled_from(actions))
        if action == "keep":
            continue
        if action == "delete":
            tree = changed(tree, {path: None})
        elif node is None and tweaks_only:
            continue
        elif action == "replace" or node is None:
            tree = changed(tree, {path: draw(st.one_of(leaves, dirs))})
        elif isinstance(node, F):
            tree[path] = draw(st.sampled_from([
                replace(node, content=node.content + b"x\n"),
                replace(node, content=b"y\n" + node.content[2:]),
                replace(node, content=node.content[:2] + b"z\n" + node.content[4:]),
                replace(node, mode=0o640), replace(node, mode=0o400),
                replace(node, xattrs=U2), replace(node, xattrs=U1 + U2)]))
        elif isinstance(node, D):
            tree[path] = draw(st.sampled_from([replace(node, mode=0o750),
                                               replace(node, mode=0o711),
                                               replace(node, xattrs=U2)]))
        elif isinstance(node, L):
            tree[path] = replace(node, target=node.target + draw(st.sampled_from([b"1", b"2"])))
        else:
            tree[path] = replace(node, mode=draw(st.sampled_from([0o640, 0o400])))
    return tree


@st.composite
def three_trees(draw: st.DrawFn, old_is_base: bool = False, new_is_base: bool = False,
                tweaks_only: bool = False) -> tuple[Spec, Spec, Spec]:
    base = draw(trees_strategy())
    candidates = [*sorted(base), b"a", b"b c/\xff", b"new", b"\xff/a"]
    targets = draw(st.lists(st.sampled_from(candidates), min_size=1, max_size=4))
    old = base if old_is_base else draw(mutated(base, targets, tweaks_only))
    new = base if new_is_base else draw(mutated(base, targets, tweaks_only))
    return base, old, new


PROPERTY = settings(max_examples=100, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])
_counter = iter(range(10**9))


def fresh(tmp_path: Path) -> Path:
    return tmp_path / f"case{next(_counter)}"


@PROPERTY
@given(three_trees(old_is_base=True))
def test_property_unchanged_old_gives_new(tmp_path: Path,
                                          specs: tuple[Spec, Spec, Spec]) -> None:
    trees = make_trees(fresh(tmp_path), *specs)
    report = trees.merge()
    assert read_back(trees.new) == specs[2]
    assert not report.conflicts


@PROPERTY
@given(three_trees(new_is_base=True))
def test_property_unchanged_new_gives_old(tmp_path: Path,
                                          specs: tuple[Spec, Spec, Spec]) -> None:
    trees = make_trees(fresh(tmp_path), *specs)
    report = trees.merge()
    assert read_back(trees.new) == specs[1]
    assert not report.conflicts


def conflicted(path: bytes, report: MergeReport) -> bool:
    paths = {c.path for c in report.conflicts}
    return any(path == p or path.startswith(p + b"/") for p in paths)


@PROPERTY
@given(three_trees())
def test_property_one_sided_changes_survive_and_conflicts_are_recoverable(
        tmp_path: Path, specs: tuple[Spec, Spec, Spec]) -> None:
    base, old, new = specs
    trees = make_trees(fresh(tmp_path), base, old, new)
    report = trees.merge()
    for outcome in {r.outcome for r in report.results}:
        event(f"outcome {outcome.value}")
    for reason in {c.reason for c in report.conflicts}:
        event(f"conflict {reason.value}")
    result = read_back(trees.new)
    for path in base.keys() | old.keys() | new.keys():
        if conflicted(path, report):
            continue
        if old.get(path) != base.get(path) and new.get(path) == base.get(path):
            assert result.get(path) == old.get(path), path
        if new.get(path) != base.get(path) and old.get(path) == base.get(path):
            assert result.get(path) == new.get(path), path
        if old.get(path) == new.get(path):
            assert result.get(path) == new.get(path), path
    for path in result.keys() - (old.keys() | new.keys()):
        raise AssertionError(f"{path!r} appeared from nowhere")
    for merged in report.results:
        if merged.outcome is Outcome.MERGED:
            assert_attributes_merged(base.get(merged.path), old[merged.path], new[merged.path],
                                     result[merged.path])
    assert_recoverable(trees, report)
    for conflict in report.conflicts:  # a conflict keeps the admin's version in place
        assert below(result, conflict.path) == below(old, conflict.path) or (
            conflict.reason not in (Reason.DELETE_MODIFY, Reason.TYPE_CHANGE)
            and result.get(conflict.path) == old.get(conflict.path))


def assert_attributes_merged(base: Node | None, old: Node, new: Node, result: Node) -> None:
    """Each attribute changed on one side only has that side's value in a merged entry."""
    def attributes(node: Node | None) -> dict[str, object]:
        if node is None:
            return {}
        found: dict[str, object] = {k: v for k, v in vars(node).items() if k != "xattrs"}
        found.update((f"xattr:{name}", value) for name, value in node.xattrs)
        return found

    b, o, t, r = attributes(base), attributes(old), attributes(new), attributes(result)
    for name in o.keys() | t.keys():
        if o.get(name) == b.get(name):
            assert r.get(name) == t.get(name), name
        elif t.get(name) == b.get(name):
            assert r.get(name) == o.get(name), name


@settings(PROPERTY, max_examples=200)
@given(three_trees(tweaks_only=True))
def test_property_merged_entries_keep_every_one_sided_attribute(
        tmp_path: Path, specs: tuple[Spec, Spec, Spec]) -> None:
    base, old, new = specs
    trees = make_trees(fresh(tmp_path), base, old, new)
    report = trees.merge()
    result = read_back(trees.new)
    for merged in report.results:
        event(f"outcome {merged.outcome.value}")
        if merged.outcome is Outcome.MERGED:
            assert_attributes_merged(base.get(merged.path), old[merged.path], new[merged.path],
                                     result[merged.path])
        elif merged.outcome is Outcome.CONFLICT:
            assert result.get(merged.path) == old.get(merged.path)


@PROPERTY
@given(three_trees())
def test_property_merging_twice_changes_nothing(tmp_path: Path,
                                                specs: tuple[Spec, Spec, Spec]) -> None:
    trees = make_trees(fresh(tmp_path), *specs)
    trees.merge()
    once = read_back(trees.new)
    merge(trees.base, trees.old, trees.new, conflicts_dir=trees.conflicts.with_name("again"),
          sync=False)
    assert read_back(trees.new) == once
