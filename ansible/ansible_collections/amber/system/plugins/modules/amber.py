#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: amber developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: amber
short_description: Change an amber system in a transaction (a new btrfs snapshot)
version_added: "0.1.0"
description:
  - Installs, removes or updates packages, updates the whole system, runs a command, applies a
    kernel live patch or rolls back, each in an amber transaction, a new snapshot that becomes the
    default for the next boot.
  - Idempotent. Before it changes anything the module asks C(amber --dry-run) what the change would
    do against the pending snapshot; a change that is already there makes no snapshot and reports
    C(changed=false). Transactions run with C(--drop-if-no-change) as well, so a command that changes
    nothing leaves no snapshot behind.
  - Check mode is amber's C(--dry-run). It creates no snapshot and reports what would change.
  - The module reads amber's C(--json) output only. When amber fails, the task fails with amber's
    message and hint, and C(rc) is amber's exit code.
options:
  packages:
    description:
      - Package names, or paths of local C(.deb) or C(.rpm) files on the managed host.
    type: list
    elements: str
    aliases: [name]
  state:
    description:
      - C(present) installs what is missing, C(absent) removes what is there, and C(latest) updates
        the packages to the newest version the repositories have (and installs any that are missing).
    type: str
    choices: [present, absent, latest]
    default: present
  update:
    description:
      - Update the whole system (C(amber up)).
    type: bool
  command:
    description:
      - A command (argv) to run in a transaction (C(amber run)). With C(--drop-if-no-change), a
        command that modifies nothing reports C(changed=false). In check mode the command is not run,
        and the task reports that it would run.
    type: list
    elements: str
  livepatch:
    description:
      - A live patch to apply (C(amber livepatch apply)), a package name or a file on the managed host.
    type: str
  rollback:
    description:
      - Make this snapshot the default for the next boot, a snapshot number or C(last) (the previous
        default). With a number, the task changes nothing when it is already the default.
    type: str
  continue:
    description:
      - Stack the transaction onto the pending (default) snapshot instead of the booted one, so that
        repeated runs before a reboot see their own earlier changes.
    type: bool
    default: true
  description:
    description:
      - The snapshot's description (its C(info.xml)).
    type: str
  root:
    description:
      - The system root amber works on (C(--root)); the managed host's C(/) when not given.
    type: path
  wait:
    description:
      - Wait for another amber transaction on the same root instead of failing.
    type: bool
    default: false
  executable:
    description:
      - The amber program; found on the PATH when not given.
    type: path
notes:
  - Exactly one of O(packages), O(update), O(command), O(livepatch) and O(rollback) per task.
  - A reboot is needed to use the new snapshot; see the C(amber.system.rollout) role.
  - O(rollback=last) is not idempotent (it always names the previous default).
  - Check mode of O(update) and of O(state=latest) uses the package manager's simulation
    (C(apt-get -s)); on systems without apt it fails.
author:
  - amber developers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Install a package (a no-op when the pending snapshot already has it)
  amber.system.amber:
    packages: [nginx]

- name: Install a local package file
  amber.system.amber:
    packages: [/tmp/agent_1.2_all.deb]

- name: Update the whole system
  amber.system.amber:
    update: true
  register: up

- name: Reboot into the new snapshot when there is one
  ansible.builtin.reboot:
  when: up.reboot_needed

- name: Run a command in a transaction
  amber.system.amber:
    command: [systemctl, enable, nginx.service]

- name: Roll back to snapshot 3
  amber.system.amber:
    rollback: "3"
"""

RETURN = r"""
snapshot:
  description: The snapshot the transaction made, or null when nothing changed.
  returned: always
  type: int
  sample: 7
base:
  description: The snapshot the transaction (or the dry run) started from.
  returned: when a transaction or dry run ran
  type: int
  sample: 6
reboot_needed:
  description: Whether the next boot brings a different system (C(amber status)).
  returned: always
  type: bool
  sample: true
diff:
  description: The packages the change added, removed and changed (in check mode, would).
  returned: always
  type: dict
  contains:
    added:
      description: Packages added, each C({name, version}).
      type: list
      elements: dict
    removed:
      description: Packages removed, each C({name, version}).
      type: list
      elements: dict
    changed:
      description: Packages changed, each C({name, old, new}).
      type: list
      elements: dict
    before:
      description: The changed packages' old versions, as text for Ansible's --diff.
      type: str
    after:
      description: The changed packages' new versions, as text for Ansible's --diff.
      type: str
    before_header:
      description: The header of the before text in --diff.
      type: str
    after_header:
      description: The header of the after text in --diff.
      type: str
  sample: {"added": [{"name": "nginx", "version": "1.22.1-9"}], "removed": [], "changed": []}
livepatches:
  description: What C(amber livepatch apply) reported, when O(livepatch) was given.
  returned: always
  type: list
  elements: dict
  sample: []
would_run:
  description: In check mode with O(command), the command that would run.
  returned: in check mode with O(command)
  type: list
  elements: list
rc:
  description: amber's exit code when it failed.
  returned: failure
  type: int
  sample: 3
hint:
  description: amber's hint when it failed.
  returned: failure
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.amber.system.plugins.module_utils.amber_cli import (
    amber_argv,
    find_amber,
    run_json,
)

EMPTY_DIFF = {"added": [], "removed": [], "changed": []}
ACTIONS = {"present": "install", "absent": "remove", "latest": "update"}


def transaction_flags(params, dry_run):
    """The options every transaction call carries (--continue last: it takes an optional value)."""
    flags = ["--json"]
    if dry_run:
        flags.append("--dry-run")
    else:
        flags.append("--drop-if-no-change")
        if params.get("description"):
            flags += ["--description", params["description"]]
    if params.get("wait"):
        flags.append("--wait")
    if params.get("continue"):
        flags.append("--continue")
    return flags


def package_calls(params, dry_run):
    """The amber calls (verb and arguments) for the packages option, in order."""
    names = params["packages"]
    action = ACTIONS[params["state"]]
    calls = [["pkg", action] + names + transaction_flags(params, dry_run)]
    if action == "update":
        # 'latest' also installs what is missing: install first, then update the rest.
        calls.insert(0, ["pkg", "install"] + names + transaction_flags(params, dry_run))
    return calls


def transaction_calls(params, dry_run):
    """The transaction calls a task makes: packages, update or command."""
    if params["packages"]:
        return package_calls(params, dry_run)
    if params["update"]:
        return [["up"] + transaction_flags(params, dry_run)]
    return [["run"] + transaction_flags(params, dry_run) + ["--"] + params["command"]]


def livepatch_call(params):
    return ["livepatch", "apply", params["livepatch"], "--json"] + (
        ["--wait"] if params.get("wait") else [])


def rollback_call(params):
    return ["rollback", params["rollback"], "--json"] + (["--wait"] if params.get("wait") else [])


def merge_diffs(diffs):
    merged = {"added": [], "removed": [], "changed": []}
    for d in diffs:
        for key in merged:
            merged[key] += d.get(key, [])
    return merged


def diff_text(diff):
    """Ansible's --diff output: the package lists before and after, one line per package."""
    before = [p["name"] + " " + p["version"] for p in diff["removed"]]
    before += [p["name"] + " " + p["old"] for p in diff["changed"]]
    after = [p["name"] + " " + (p["version"] or "") for p in diff["added"]]
    after += [p["name"] + " " + p["new"] for p in diff["changed"]]
    return {"before_header": "packages before", "after_header": "packages after",
            "before": "".join(line + "\n" for line in sorted(before)),
            "after": "".join(line + "\n" for line in sorted(after))}


class Runner:
    def __init__(self, module):
        self.module = module
        self.params = module.params
        self.executable = find_amber(module)

    def amber(self, verb_and_args, allow_failure=False):
        argv = amber_argv(self.executable, self.params.get("root"), verb_and_args)
        return run_json(self.module, argv, allow_failure=allow_failure)

    def status(self):
        return self.amber(["status", "--json"])

    def finish(self, changed, snapshot=None, base=None, diff=None, **extra):
        diff = diff or dict(EMPTY_DIFF)
        result = dict(changed=changed, snapshot=snapshot, diff=diff,
                      reboot_needed=bool(self.status().get("reboot_needed")),
                      livepatches=extra.pop("livepatches", []), **extra)
        if base is not None:
            result["base"] = base
        # Ansible shows before/after of the key 'diff' with --diff; the package lists stay too.
        result["diff"] = dict(diff_text(diff), **diff)
        self.module.exit_json(**result)

    def transactions(self):
        """Dry-run each call; then run, for real, those that would change something."""
        calls = zip(transaction_calls(self.params, True), transaction_calls(self.params, False))
        plans = [(real, self.amber(dry)) for dry, real in calls]
        wanted = [(real, plan) for real, plan in plans if plan["changed"]]
        base = plans[0][1]["base"] if plans else None
        would = merge_diffs(plan["would"] for dummy, plan in wanted)
        if not wanted:
            return self.finish(False, base=base)
        if self.module.check_mode:
            runs = [plan["would"]["run"] for dummy, plan in wanted if "run" in plan["would"]]
            extra = {"would_run": [r for group in runs for r in group]} if runs else {}
            return self.finish(True, base=base, diff=would, **extra)
        snapshot, changed, diffs = None, False, []
        for call, dummy in wanted:
            done = self.amber(call)
            if done.get("changed"):
                changed, snapshot = True, done["snapshot"]
                diffs.append(self.amber(["diff", str(done["base"]), str(snapshot), "--json"]))
        return self.finish(changed, snapshot=snapshot, base=base, diff=merge_diffs(diffs))

    def rollback(self):
        target = self.params["rollback"]
        status = self.status()
        if target.isdigit() and status.get("default") == int(target):
            return self.finish(False, snapshot=int(target))
        if self.module.check_mode:
            return self.finish(True, snapshot=int(target) if target.isdigit() else None)
        done = self.amber(rollback_call(self.params))
        number = done.get("default") if isinstance(done, dict) else None
        return self.finish(True, snapshot=number)

    def livepatch(self):
        if self.module.check_mode:
            return self.finish(True)
        done = self.amber(livepatch_call(self.params))
        return self.finish(True, snapshot=done.get("snapshot"), livepatches=[done])


def argument_spec():
    return dict(
        packages=dict(type="list", elements="str", aliases=["name"]),
        state=dict(type="str", choices=list(ACTIONS), default="present"),
        update=dict(type="bool"),
        command=dict(type="list", elements="str"),
        livepatch=dict(type="str"),
        rollback=dict(type="str"),
        description=dict(type="str"),
        root=dict(type="path"),
        wait=dict(type="bool", default=False),
        executable=dict(type="path"),
        **{"continue": dict(type="bool", default=True)}
    )


WHAT = ["packages", "update", "command", "livepatch", "rollback"]


def main():
    module = AnsibleModule(
        argument_spec=argument_spec(),
        mutually_exclusive=[WHAT],
        required_one_of=[WHAT],
        supports_check_mode=True,
    )
    params = module.params
    if not any(params[k] for k in WHAT):
        module.fail_json(msg="nothing to do: give one of packages, update=true, command, "
                             "livepatch or rollback")
    runner = Runner(module)
    if params["packages"] or params["update"] or params["command"]:
        runner.transactions()
    elif params["livepatch"]:
        runner.livepatch()
    else:
        runner.rollback()


if __name__ == "__main__":
    main()
