-- EBS-backed images and instances (services/cloud_controller/ebs/roots.py).
-- An image's root device type and its block device mappings, JSON: [{"device", "snapshot_id", "size",
-- "delete_on_termination"}] (the root's snapshot for an EBS-backed image).
ALTER TABLE images ADD COLUMN root_device_type TEXT NOT NULL DEFAULT 'instance-store';
ALTER TABLE images ADD COLUMN block_devices TEXT NOT NULL DEFAULT '[]';
ALTER TABLE instances ADD COLUMN root_device_type TEXT NOT NULL DEFAULT 'instance-store';
ALTER TABLE instances ADD COLUMN root_device_name TEXT NOT NULL DEFAULT '/dev/sda1';
-- The CC reservation id of the instance's current run (a StartInstances makes a new one; '' = reservation_id):
-- reports about an earlier run are told apart by it.
ALTER TABLE instances ADD COLUMN launch_id TEXT NOT NULL DEFAULT '';
-- A volume the instance boots with (its root or a launch mapping): exported by the CC at each start of the
-- instance, not hot-plugged.
ALTER TABLE volumes ADD COLUMN boot INTEGER NOT NULL DEFAULT 0;
