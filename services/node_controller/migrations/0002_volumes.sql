-- EBS volumes plugged into this node's domains (services/node_controller/volumes.py), written before libvirt is
-- asked, so a reboot (destroy and create from libvirt.xml) and a restart plug them in again.
CREATE TABLE volume_attachments (
    volume_id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    target TEXT NOT NULL,   -- the guest's device (vdX)
    disk_xml TEXT NOT NULL
);
