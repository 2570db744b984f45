-- BundleInstance tasks this node works on (services/node_controller/bundler.py); each state is written before
-- the work it names starts, so a restart finds what was under way (and fails it, removing its files).
CREATE TABLE bundle_tasks (
    bundle_id TEXT PRIMARY KEY,
    instance_id TEXT NOT NULL,
    request TEXT NOT NULL,          -- the StartBundleRequest as JSON
    state TEXT NOT NULL,            -- bundling, storing, stored, failed
    progress INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    manifest TEXT NOT NULL DEFAULT '',
    updated_at REAL NOT NULL
);
