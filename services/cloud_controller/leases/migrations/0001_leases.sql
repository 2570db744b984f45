-- Leases (DESIGN 12): advance reservations (EC2 Capacity Reservations), best-effort leases (EC2 Spot requests),
-- the preemptions made and the notices given. Kept in leases.db, apart from clc.db, with its own versions.
CREATE TABLE capacity_reservations (
    reservation_id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    zone TEXT NOT NULL,
    instance_type TEXT NOT NULL,
    platform TEXT NOT NULL,
    tenancy TEXT NOT NULL DEFAULT 'default',
    total INTEGER NOT NULL,
    match TEXT NOT NULL,              -- open | targeted
    start_date REAL NOT NULL,
    end_date REAL,                    -- NULL: unlimited
    end_date_type TEXT NOT NULL,      -- unlimited | limited
    state TEXT NOT NULL,              -- scheduled | active | expired | cancelled
    create_date REAL NOT NULL,
    client_token TEXT NOT NULL DEFAULT '',
    nodes TEXT NOT NULL,              -- JSON: the node id of each reserved VM (the slot-table mapping)
    tags TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX capacity_reservations_owner ON capacity_reservations (owner_id);

CREATE TABLE lease_instances (        -- which instances run in which capacity reservation or spot request
    instance_id TEXT PRIMARY KEY,
    lease_id TEXT NOT NULL
);
CREATE INDEX lease_instances_lease ON lease_instances (lease_id);

CREATE TABLE spot_requests (
    request_id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    user_id TEXT NOT NULL DEFAULT '',
    position INTEGER NOT NULL,        -- FIFO order (kept across restarts; a resumed lease goes first)
    type TEXT NOT NULL,               -- one-time | persistent
    state TEXT NOT NULL,              -- open | active | closed | cancelled | failed | disabled
    status_code TEXT NOT NULL,
    status_message TEXT NOT NULL DEFAULT '',
    status_time REAL NOT NULL,
    interruption TEXT NOT NULL,       -- terminate | stop | hibernate
    spec TEXT NOT NULL,               -- JSON launch specification
    zone TEXT NOT NULL DEFAULT '',
    instance_id TEXT NOT NULL DEFAULT '',
    valid_until REAL,
    duration REAL,                    -- BlockDurationMinutes * 60, or NULL
    create_time REAL NOT NULL,
    client_token TEXT NOT NULL DEFAULT '',
    notice_action TEXT NOT NULL DEFAULT '',  -- the metadata service's spot/instance-action
    notice_time REAL
);
CREATE INDEX spot_requests_owner ON spot_requests (owner_id);

CREATE TABLE preemptions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    request_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    action TEXT NOT NULL,             -- terminate | suspend | resume
    reason TEXT NOT NULL
);
