-- Compute state of the Cloud Controller: VM types, images, reservations, instances, addresses, networks.
-- Owner ids are account ids (EC2's 12-digit owner id); user ids name the IAM-style user inside the account.

CREATE TABLE vm_types (
    name TEXT PRIMARY KEY,
    cores INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    disk_gb INTEGER NOT NULL
);

CREATE TABLE images (
    image_id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('machine', 'kernel', 'ramdisk')),
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    location TEXT NOT NULL,
    architecture TEXT NOT NULL DEFAULT 'x86_64',
    kernel_id TEXT NOT NULL DEFAULT '',
    ramdisk_id TEXT NOT NULL DEFAULT '',
    root_device_name TEXT NOT NULL DEFAULT '/dev/sda1',
    state TEXT NOT NULL DEFAULT 'available',
    is_public INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL
);
CREATE UNIQUE INDEX images_owner_name ON images(owner_id, name) WHERE state != 'deregistered';

CREATE TABLE image_launch_permissions (
    image_id TEXT NOT NULL REFERENCES images(image_id) ON DELETE CASCADE,
    account_id TEXT NOT NULL,
    PRIMARY KEY (image_id, account_id)
);

CREATE TABLE reservations (
    reservation_id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    requester_user_id TEXT NOT NULL DEFAULT '',
    zone TEXT NOT NULL,
    client_token TEXT NOT NULL DEFAULT '',
    groups TEXT NOT NULL DEFAULT '[]',
    group_ids TEXT NOT NULL DEFAULT '[]',
    created_at REAL NOT NULL
);
CREATE UNIQUE INDEX reservations_token ON reservations(owner_id, client_token) WHERE client_token != '';

CREATE TABLE instances (
    instance_id TEXT PRIMARY KEY,
    reservation_id TEXT NOT NULL REFERENCES reservations(reservation_id),
    owner_id TEXT NOT NULL,
    user_id TEXT NOT NULL DEFAULT '',
    image_id TEXT NOT NULL,
    kernel_id TEXT NOT NULL DEFAULT '',
    ramdisk_id TEXT NOT NULL DEFAULT '',
    vm_type TEXT NOT NULL,
    cores INTEGER NOT NULL,
    memory_mb INTEGER NOT NULL,
    disk_gb INTEGER NOT NULL,
    key_name TEXT NOT NULL DEFAULT '',
    key_material TEXT NOT NULL DEFAULT '',
    user_data TEXT NOT NULL DEFAULT '',
    launch_index INTEGER NOT NULL DEFAULT 0,
    zone TEXT NOT NULL,
    state TEXT NOT NULL,
    state_reason TEXT NOT NULL DEFAULT '',
    private_mac TEXT NOT NULL DEFAULT '',
    private_ip TEXT NOT NULL DEFAULT '',
    public_ip TEXT NOT NULL DEFAULT '',
    vlan INTEGER NOT NULL DEFAULT -1,
    network_index INTEGER NOT NULL DEFAULT -1,
    node_id TEXT NOT NULL DEFAULT '',
    launch_time REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_seen REAL NOT NULL DEFAULT 0,
    terminated_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX instances_owner ON instances(owner_id);
CREATE INDEX instances_reservation ON instances(reservation_id);

CREATE TABLE addresses (
    public_ip TEXT PRIMARY KEY,
    allocation_id TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    instance_id TEXT NOT NULL DEFAULT '',
    association_id TEXT NOT NULL DEFAULT '',
    auto INTEGER NOT NULL DEFAULT 0,
    allocated_at REAL NOT NULL
);

CREATE TABLE networks (
    name TEXT PRIMARY KEY,  -- "<account>-<group>", as Eucalyptus named them
    vlan INTEGER NOT NULL UNIQUE
);
