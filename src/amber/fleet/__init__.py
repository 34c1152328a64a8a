"""When and how a machine reboots: maintenance windows (`window`) and fleet-wide reboot slots
taken from a FleetLock server (`fleetlock`, `node_id`)."""
