-- The zone's block storage (services/cluster_controller/storage/): every state is written before it is acted on.
CREATE TABLE volumes (
    volume_id TEXT PRIMARY KEY,
    size_gb INTEGER NOT NULL,
    snapshot_id TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,              -- creating, available, deleting, error
    tid INTEGER NOT NULL UNIQUE,      -- its tgt target id (the target exists only while it is attached)
    detail TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);

-- At most one attachment per volume; the initiator name is the ACL entry only this attachment knows.
CREATE TABLE attachments (
    volume_id TEXT PRIMARY KEY REFERENCES volumes(volume_id),
    instance_id TEXT NOT NULL,
    node_url TEXT NOT NULL,
    device TEXT NOT NULL,
    initiator TEXT NOT NULL,
    state TEXT NOT NULL,              -- attaching, attached, detaching
    detail TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL
);

-- Snapshots this zone took; `chunks` is the JSON list of chunk digests ("" for an all-zero chunk) once completed.
CREATE TABLE snapshots (
    snapshot_id TEXT PRIMARY KEY,
    volume_id TEXT NOT NULL,
    size_gb INTEGER NOT NULL,
    state TEXT NOT NULL,              -- pending, completed, error, deleting
    progress INTEGER NOT NULL DEFAULT 0,
    stored_bytes INTEGER NOT NULL DEFAULT 0,
    parent TEXT NOT NULL DEFAULT '',  -- the volume's previous completed snapshot, whose chunks it reuses
    chunks TEXT NOT NULL DEFAULT '[]',
    detail TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL
);
