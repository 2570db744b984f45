-- Live migrations this node sends (services/node_controller/migration.py): written before libvirt is asked, so a
-- restart knows a guest's absence is a migration's success (or its presence a failure) rather than a crash.
CREATE TABLE migrations (
    instance_id TEXT PRIMARY KEY,
    target TEXT NOT NULL,           -- the MigrationTarget as JSON
    state TEXT NOT NULL,            -- running, completed, failed
    error TEXT NOT NULL DEFAULT '',
    stats TEXT NOT NULL DEFAULT '{}',
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
