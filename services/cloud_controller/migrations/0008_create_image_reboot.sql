-- CreateImage without NoReboot (services/cloud_controller/ebs/roots.py): the instance whose volumes the pending
-- image snapshots while it is down; '' once its snapshots are taken and it is started again.
ALTER TABLE images ADD COLUMN reboot_instance_id TEXT NOT NULL DEFAULT '';
