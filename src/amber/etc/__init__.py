"""/etc on an immutable root: the three-way merge that carries the admin's edits into a new
snapshot, and what it needs.

- merge.py: the rules per path, planning, applying into a copy, the atomic-swap contract
  (`plan_merge`, `apply_plan`, `merge_into`, `merge`);
- tree.py: snapshots of a tree by lstat, never following a symlink; writer.py: writing entries
  the same way, `exchange` (renameat2 RENAME_EXCHANGE) and `syncfs`;
- records.py: passwd, group, shadow, gshadow, subuid, subgid merged record by record;
  lines.py: other text merged line by line (diff3);
- conflicts.py: the copies of every conflict's three versions and their manifest;
- diff.py: what changed in one /etc against a reference (`amber etc diff`);
- syncpoint.py: transactional-update's pending-merge marker.
"""
