#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: amber developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: amber_info
short_description: The state of an amber system as facts
version_added: "0.1.0"
description:
  - Reads C(amber status --json), C(amber snapshots --json) and C(amber livepatch list --json), and
    returns them, and as the fact C(amber) (C(ansible_facts.amber)).
  - C(health) is amber's boot health when amber reports one (C(amber status)), else null.
  - Reads only; check mode runs it too.
options:
  root:
    description:
      - The system root amber works on (C(--root)); the managed host's C(/) when not given.
    type: path
  executable:
    description:
      - The amber program; found on the PATH when not given.
    type: path
  livepatches:
    description:
      - Whether to read the kernel's live patches too (C(amber livepatch list)).
    type: bool
    default: true
attributes:
  check_mode:
    description: Runs in check mode as well; it only reads.
    support: full
  facts:
    description: Returns the fact C(amber).
    support: full
author:
  - amber developers (!UNKNOWN)
"""

EXAMPLES = r"""
- name: Read amber's state
  amber.system.amber_info:
  register: amber_state

- name: The booted snapshot is the one the update made
  ansible.builtin.assert:
    that: amber_state.status.booted == update.snapshot
"""

RETURN = r"""
status:
  description: C(amber status --json) (root, booted, default, in_progress, interrupted, reboot_needed).
  returned: always
  type: dict
  sample: {"booted": 6, "default": 7, "reboot_needed": true}
snapshots:
  description: C(amber snapshots --json), one object per snapshot.
  returned: always
  type: list
  elements: dict
livepatches:
  description: C(amber livepatch list --json), or null when it was not read or the kernel has none.
  returned: always
  type: dict
health:
  description: amber's boot health (the C(health) of C(amber status)), null when amber reports none.
  returned: always
  type: raw
ansible_facts:
  description: The same as the fact C(amber).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.amber.system.plugins.module_utils.amber_cli import (
    amber_argv,
    find_amber,
    run_json,
)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            root=dict(type="path"),
            executable=dict(type="path"),
            livepatches=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    executable = find_amber(module)
    root = module.params["root"]

    def amber(*verb, **kwargs):
        return run_json(module, amber_argv(executable, root, verb), **kwargs)

    status = amber("status", "--json")
    snapshots = amber("snapshots", "--json")
    livepatches = None
    if module.params["livepatches"]:
        # A kernel without live patching (or a container) has no list: that is not a failure.
        livepatches = amber("livepatch", "list", "--json", allow_failure=True)
    facts = dict(status=status, snapshots=snapshots, livepatches=livepatches,
                 health=status.get("health"))
    module.exit_json(changed=False, ansible_facts=dict(amber=facts), **facts)


if __name__ == "__main__":
    main()
