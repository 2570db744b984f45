-- BundleInstance tasks (services/cloud_controller/compute/bundle_tasks.py). Each state is written before the
-- step it names, so a CLC restart resumes every task that is not complete or failed.
CREATE TABLE bundle_tasks (
    bundle_id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    zone TEXT NOT NULL,
    state TEXT NOT NULL,            -- pending, bundling, storing, cancelling, complete, failed
    progress INTEGER NOT NULL DEFAULT 0,
    start_time REAL NOT NULL,
    update_time REAL NOT NULL,
    storage TEXT NOT NULL,          -- bucket, prefix, access key id, policy, signature, acl (JSON)
    error_code TEXT NOT NULL DEFAULT '',
    error_message TEXT NOT NULL DEFAULT ''
);
CREATE INDEX bundle_tasks_owner ON bundle_tasks(owner_id);
