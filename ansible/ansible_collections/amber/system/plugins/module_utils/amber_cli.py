# -*- coding: utf-8 -*-
# Copyright: amber developers
# GNU General Public License v2.0+ (see https://www.gnu.org/licenses/old-licenses/gpl-2.0.txt)
"""Calling amber from a module: argv building and --json reading, shared by the modules."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import json


def amber_argv(executable, root, verb, *args):
    """The argv of one amber call: the global --root, the verb, its arguments."""
    argv = [executable]
    if root:
        argv += ["--root", root]
    return argv + list(verb) + list(args)


def find_amber(module):
    executable = module.params.get("executable")
    if executable:
        return executable
    return module.get_bin_path("amber", required=True)


def run_json(module, argv, allow_failure=False):
    """Run amber with --json; its stdout is one JSON document. On failure, the task fails with
    amber's own message, hint and exit code (the error object amber prints under --json)."""
    rc, out, err = module.run_command(argv, check_rc=False)
    value = None
    if out.strip():
        try:
            value = json.loads(out)
        except ValueError:
            module.fail_json(msg="amber printed something that is not JSON on stdout",
                             cmd=argv, rc=rc, stdout=out, stderr=err)
    if rc == 0:
        return value
    if allow_failure:
        return None
    error = value.get("error", {}) if isinstance(value, dict) else {}
    message = error.get("message") or _last_error_line(err) or "amber exited %d" % rc
    module.fail_json(msg=message, hint=error.get("hint"), rc=rc, cmd=argv, stderr=err)


def _last_error_line(stderr):
    for line in reversed(stderr.splitlines()):
        if line.startswith("error: "):
            return line[len("error: "):]
    return None
