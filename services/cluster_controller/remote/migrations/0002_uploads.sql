-- Local images re-bundled for the remote cloud on demand (KOALA_REMOTE_AUTO_UPLOAD), written before each step:
-- the remote bucket is named here before anything is put in it, so whatever a crash leaves remotely is known.
CREATE TABLE uploads (
    local_id TEXT PRIMARY KEY,        -- the local image (emi-/eki-/eri-)
    kind TEXT NOT NULL,               -- machine, kernel or ramdisk
    manifest TEXT NOT NULL,           -- the local bundle's location (bucket/key) in this cloud's Walrus
    bucket TEXT NOT NULL,             -- the remote bucket holding the re-made bundle (this zone's alone)
    state TEXT NOT NULL,              -- uploading, registering, ready, failed
    remote_id TEXT NOT NULL DEFAULT '',  -- the remote image, once registered
    reason TEXT NOT NULL DEFAULT '',  -- why it failed
    updated_at REAL NOT NULL
);
