"""The systemd units amber ships (src/amber/data/systemd, installed into /usr/lib/systemd/system
by the Debian package), and enabling them in a root as amber.conf asks: `amber image build`
calls enable() on the image's root.

    amber-update.timer               [update] enabled: daily (or [update] schedule), with a
                                     randomized delay, persistent across downtime
    amber-update.service             amber up --continue --drop-if-no-change, then
                                     amber reboot --if-needed
    amber-fleetlock-release.service  [reboot] strategy = "fleetlock": after boot-complete.target,
                                     amber reboot --steady-state gives the slot back
"""

from __future__ import annotations

from pathlib import Path

from amber import config, log

UNIT_DIR = "/usr/lib/systemd/system"
TIMER = "amber-update.timer"
RELEASE = "amber-fleetlock-release.service"
SCHEDULE_DROP_IN = f"etc/systemd/system/{TIMER}.d/50-amber-schedule.conf"


def schedule_drop_in(schedule: str) -> str:
    return ("# Written by amber from [update] schedule in /etc/amber/amber.conf.\n"
            f"[Timer]\nOnCalendar=\nOnCalendar={schedule}\n")


def _wants(root: Path, target: str, unit: str) -> None:
    link = root / "etc/systemd/system" / f"{target}.wants" / unit
    link.parent.mkdir(parents=True, exist_ok=True)
    link.unlink(missing_ok=True)
    link.symlink_to(f"{UNIT_DIR}/{unit}")


def enable(root: Path) -> list[str]:
    """Enable the units amber.conf of `root` asks for (as `systemctl enable` would); returns
    their names."""
    settings = config.load(root)
    enabled = []
    if settings.update.enabled:
        drop_in = root / SCHEDULE_DROP_IN
        drop_in.parent.mkdir(parents=True, exist_ok=True)
        drop_in.write_text(schedule_drop_in(settings.update.schedule))
        _wants(root, "timers.target", TIMER)
        enabled.append(TIMER)
    if settings.reboot.strategy == config.RebootStrategy.FLEETLOCK:
        _wants(root, "multi-user.target", RELEASE)
        enabled.append(RELEASE)
    if enabled:
        log.step(f"enabling {', '.join(enabled)}")
    return enabled
