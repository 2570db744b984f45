-- The CC's network state: what the CLC asked for (networks with their rules, elastic-IP assignments) and the
-- instances' network entries, so a restarted CC restores the network before the CLC has said anything.
CREATE TABLE networks (
    name TEXT PRIMARY KEY,
    vlan INTEGER NOT NULL UNIQUE,
    rules TEXT NOT NULL DEFAULT '[]',  -- JSON list of NetworkRule
    updated_at REAL NOT NULL
);

CREATE TABLE instance_nets (
    instance_id TEXT PRIMARY KEY,
    mac TEXT NOT NULL,
    ip TEXT NOT NULL DEFAULT '',
    vlan INTEGER NOT NULL DEFAULT -1
);

CREATE TABLE addresses (
    public_ip TEXT PRIMARY KEY,
    private_ip TEXT NOT NULL UNIQUE,
    instance_id TEXT NOT NULL DEFAULT ''
);
