-- Elastic Block Store (services/cloud_controller/ebs/): what users asked for; the zones' CCs hold the data.
CREATE TABLE volumes (
    volume_id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    zone TEXT NOT NULL,
    size_gb INTEGER NOT NULL,
    snapshot_id TEXT NOT NULL DEFAULT '',
    volume_type TEXT NOT NULL DEFAULT 'standard',
    state TEXT NOT NULL,                    -- creating, available, in-use, deleting, error
    create_time REAL NOT NULL,
    client_token TEXT NOT NULL DEFAULT '',
    instance_id TEXT NOT NULL DEFAULT '',   -- the attachment, if any
    device TEXT NOT NULL DEFAULT '',
    attach_state TEXT NOT NULL DEFAULT '',  -- attaching, attached, detaching
    attach_time REAL NOT NULL DEFAULT 0,
    delete_on_termination INTEGER NOT NULL DEFAULT 0,
    detail TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL
);
CREATE INDEX volumes_owner ON volumes(owner_id);

CREATE TABLE snapshots (
    snapshot_id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    volume_id TEXT NOT NULL,
    volume_size INTEGER NOT NULL,
    zone TEXT NOT NULL,                     -- the zone whose CC took it (and deletes it)
    state TEXT NOT NULL,                    -- pending, completed, error, deleting
    progress INTEGER NOT NULL DEFAULT 0,
    start_time REAL NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    public INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL
);
CREATE INDEX snapshots_owner ON snapshots(owner_id);

-- createVolumePermission: accounts (besides the owner) that may make volumes from a snapshot.
CREATE TABLE snapshot_permissions (
    snapshot_id TEXT NOT NULL,
    account_id TEXT NOT NULL,
    PRIMARY KEY (snapshot_id, account_id)
);
