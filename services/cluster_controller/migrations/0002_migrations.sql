-- Live migrations the CC drives (services/cluster_controller/migration.py). Each state is written before the call
-- it names, so a restarted CC finishes or undoes what was under way (one running copy, never two, never none).
CREATE TABLE migrations (
    instance_id TEXT PRIMARY KEY,
    source_url TEXT NOT NULL,
    target_url TEXT NOT NULL,
    mode TEXT NOT NULL DEFAULT 'live',
    state TEXT NOT NULL,            -- preparing, migrating, finishing, aborting, done, failed
    target TEXT NOT NULL DEFAULT '',  -- the target NC's MigrationTarget (JSON) once prepared
    error TEXT NOT NULL DEFAULT '',
    started_at REAL NOT NULL,
    updated_at REAL NOT NULL
);

-- Nodes under maintenance (EvacuateNode): nothing is placed there until RestoreNode.
CREATE TABLE maintenance (
    url TEXT PRIMARY KEY,
    since REAL NOT NULL
);
