"""The amber module's arguments → amber's argv, with Ansible's run_command layer replaced by a
recorder of argv that answers as amber's --json would (the integration test runs the real amber,
tests/root/test_ansible.py)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ansible")
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "ansible"))

from ansible.module_utils import basic
from ansible.module_utils.common.text.converters import to_bytes
from ansible_collections.amber.system.plugins.modules import amber as module


class Exit(Exception):
    def __init__(self, kind: str, result: dict[str, Any]):
        self.kind, self.result = kind, result


def run_module(monkeypatch: pytest.MonkeyPatch, args: dict[str, Any],
               answers: dict[str, tuple[int, Any]]) -> tuple[Exit, list[list[str]]]:
    """Run the module's main(); answers maps an amber verb line ('pkg install --dry-run') to
    (exit code, JSON document)."""
    calls: list[list[str]] = []

    def run_command(self: Any, argv: list[str], check_rc: bool = False,
                    **kwargs: Any) -> tuple[int, str, str]:
        calls.append(argv)
        verb = " ".join(a for a in argv[3:] if not a.startswith("/") and a not in ("--json",
                        "--continue", "--drop-if-no-change", "--", "x.deb", "nginx"))
        rc, value = answers[verb]
        return rc, json.dumps(value), "" if rc == 0 else "error: boom\n"

    monkeypatch.setattr(basic.AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", to_bytes(json.dumps(
        {"ANSIBLE_MODULE_ARGS": {"executable": "/amber", "root": "/r", **args}})))
    monkeypatch.setattr(basic.AnsibleModule, "exit_json",
                        lambda self, **r: (_ for _ in ()).throw(Exit("exit", r)))
    monkeypatch.setattr(basic.AnsibleModule, "fail_json",
                        lambda self, **r: (_ for _ in ()).throw(Exit("fail", r)))
    with pytest.raises(Exit) as caught:
        module.main()
    return caught.value, calls


STATUS = {"status": (0, {"booted": 1, "default": 1, "reboot_needed": False})}
NOTHING: dict[str, Any] = {"dry_run": True, "changed": False, "base": 1,
           "would": {"added": [], "removed": [], "changed": []}}


def test_satisfied_install_makes_no_transaction(monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, calls = run_module(monkeypatch, {"packages": ["nginx"]},
                                {"pkg install --dry-run": (0, NOTHING), **STATUS})
    assert outcome.kind == "exit" and outcome.result["changed"] is False
    assert calls[0] == ["/amber", "--root", "/r", "pkg", "install", "nginx", "--json",
                        "--dry-run", "--continue"]
    assert len(calls) == 2  # the dry run and the status, no transaction


def test_absent_maps_to_remove_and_continue_false_drops_the_flag(
        monkeypatch: pytest.MonkeyPatch) -> None:
    _, calls = run_module(monkeypatch, {"packages": ["nginx"], "state": "absent",
                                              "continue": False},
                                {"pkg remove --dry-run": (0, NOTHING), **STATUS})
    assert calls[0] == ["/amber", "--root", "/r", "pkg", "remove", "nginx", "--json",
                        "--dry-run"]


def test_a_change_runs_the_transaction_with_drop_if_no_change(
        monkeypatch: pytest.MonkeyPatch) -> None:
    would = {**NOTHING, "changed": True,
             "would": {"added": [{"name": "x", "version": "1"}], "removed": [], "changed": []}}
    done = {"snapshot": 2, "base": 1, "changed": True, "dropped": False}
    diff = would["would"]
    outcome, calls = run_module(monkeypatch, {"packages": ["x.deb"]}, {
        "pkg install --dry-run": (0, would), "pkg install": (0, done), "diff 1 2": (0, diff),
        **STATUS})
    assert outcome.result["changed"] is True and outcome.result["snapshot"] == 2
    assert calls[1] == ["/amber", "--root", "/r", "pkg", "install", "x.deb", "--json",
                        "--drop-if-no-change", "--continue"]
    assert outcome.result["diff"]["added"] == [{"name": "x", "version": "1"}]


def test_command_goes_after_a_double_dash(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = {**NOTHING, "changed": True, "would": {**NOTHING["would"], "run": [["touch", "/f"]]}}
    outcome, calls = run_module(monkeypatch, {"command": ["touch", "/f"],
                                              "_ansible_check_mode": True},
                                {"run --dry-run touch": (0, plan), **STATUS})
    assert calls[0][-3:] == ["--", "touch", "/f"]
    assert outcome.result["changed"] is True and outcome.result["would_run"] == [["touch", "/f"]]
    assert len(calls) == 2  # check mode: the dry run and the status only


def test_amber_error_becomes_a_failure_with_message_hint_and_code(
        monkeypatch: pytest.MonkeyPatch) -> None:
    error = {"error": {"message": "package file x.deb does not exist", "hint": None, "code": 5}}
    outcome, _ = run_module(monkeypatch, {"packages": ["x.deb"]},
                            {"pkg install --dry-run": (5, error)})
    assert outcome.kind == "fail"
    assert outcome.result["msg"] == "package file x.deb does not exist"
    assert outcome.result["rc"] == 5


def test_two_kinds_of_change_in_one_task_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, calls = run_module(monkeypatch, {"packages": ["x"], "update": True}, {})
    assert outcome.kind == "fail" and "mutually exclusive" in outcome.result["msg"]
    assert calls == []


def test_rollback_to_the_default_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    outcome, calls = run_module(monkeypatch, {"rollback": "1"}, STATUS)
    assert outcome.kind == "exit" and outcome.result["changed"] is False
    assert all("rollback" not in argv for argv in calls)
