-- One row per instance this NC runs or ran recently; written before any domain is created.
CREATE TABLE instances (
    instance_id TEXT PRIMARY KEY,
    request TEXT NOT NULL,          -- the RunInstanceRequest as JSON
    state TEXT NOT NULL,            -- Pending, Extant, Teardown
    detail TEXT NOT NULL,           -- staging, booting, running, shutoff, crashed, terminated, ...
    reason TEXT NOT NULL DEFAULT '',
    launch_time REAL NOT NULL,
    updated_at REAL NOT NULL,
    teardown_at REAL,
    pins TEXT NOT NULL DEFAULT '[]'   -- cached image files this instance holds (JSON list)
);

-- The node-local image cache: one current version per image id, LRU by last_used.
CREATE TABLE image_cache (
    image_id TEXT PRIMARY KEY,
    manifest TEXT NOT NULL,
    sha256 TEXT NOT NULL,           -- of the image, as Walrus announced and the NC checked
    file TEXT NOT NULL,             -- file name inside the image's cache directory
    size INTEGER NOT NULL,
    last_used REAL NOT NULL
);
