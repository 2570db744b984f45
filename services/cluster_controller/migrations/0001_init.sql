-- The CC's own state: its nodes, and the instances it placed (with what it needs to (re)send them).
CREATE TABLE nodes (
    url TEXT PRIMARY KEY,
    node_id TEXT NOT NULL DEFAULT '',
    source TEXT NOT NULL CHECK (source IN ('config', 'registered')),
    mac TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL DEFAULT 'DOWN',
    memory_max_mb INTEGER NOT NULL DEFAULT 0,
    disk_max_gb INTEGER NOT NULL DEFAULT 0,
    cores_max INTEGER NOT NULL DEFAULT 0,
    updated_at REAL NOT NULL DEFAULT 0
);

-- What RunInstances asked for, minus the per-instance part: enough to send RunInstance to a node again.
CREATE TABLE reservations (
    reservation_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    created_at REAL NOT NULL
);

CREATE TABLE instances (
    instance_id TEXT PRIMARY KEY,
    reservation_id TEXT NOT NULL,
    owner_id TEXT NOT NULL DEFAULT '',
    node_url TEXT NOT NULL,
    vm TEXT NOT NULL,               -- VmType JSON
    launch_index INTEGER NOT NULL DEFAULT 0,
    net TEXT NOT NULL DEFAULT '{}', -- NetConfig JSON
    state TEXT NOT NULL,            -- Pending, Extant, Teardown
    detail TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    launch_time REAL NOT NULL DEFAULT 0,
    confirmed INTEGER NOT NULL DEFAULT 0,    -- the node accepted it (RunInstance answered, or it reported it)
    terminating INTEGER NOT NULL DEFAULT 0,  -- TerminateInstances asked for it: level-triggered until Teardown
    tried TEXT NOT NULL DEFAULT '[]',        -- nodes that failed its RunInstance
    ended_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX instances_node ON instances(node_url);
