-- A remote zone's state: what it launched in the remote cloud for which local instance, written before each call.
CREATE TABLE reservations (
    reservation_id TEXT PRIMARY KEY,
    spec TEXT NOT NULL,               -- the launch specification (LaunchSpec JSON)
    created_at REAL NOT NULL
);

CREATE TABLE instances (
    instance_id TEXT PRIMARY KEY,     -- the local id; the remote instance carries it as a tag
    reservation_id TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    vm TEXT NOT NULL,                 -- VmType JSON
    launch_index INTEGER NOT NULL DEFAULT 0,
    net TEXT NOT NULL DEFAULT '{}',   -- NetConfig JSON, with the remote's addresses once known
    state TEXT NOT NULL,              -- Pending, Extant, Teardown
    remote_id TEXT NOT NULL DEFAULT '',  -- empty while the launch is in flight
    remote_state TEXT NOT NULL DEFAULT '',
    terminating INTEGER NOT NULL DEFAULT 0,
    detail TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    launch_time REAL NOT NULL DEFAULT 0,
    ended_at REAL NOT NULL DEFAULT 0
);

-- The rule sets the CLC gave each local network (security group), applied to its remote group.
CREATE TABLE networks (
    name TEXT PRIMARY KEY,
    rules TEXT NOT NULL,              -- [NetworkRule JSON]
    updated_at REAL NOT NULL
);
