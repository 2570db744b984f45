-- Walrus metadata: buckets, objects (pointing at immutable data files by generated id), multipart uploads.
CREATE TABLE buckets (
    name TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    owner_name TEXT NOT NULL,
    created REAL NOT NULL,
    location TEXT NOT NULL DEFAULT '',
    acl TEXT NOT NULL,
    object_count INTEGER NOT NULL DEFAULT 0,
    bytes_used INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX buckets_owner ON buckets(owner_id);

CREATE TABLE objects (
    bucket TEXT NOT NULL REFERENCES buckets(name),
    key TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    last_modified REAL NOT NULL,
    owner_id TEXT NOT NULL,
    owner_name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    headers TEXT NOT NULL,      -- JSON: standard headers kept with the object
    meta TEXT NOT NULL,         -- JSON: x-amz-meta-* (names without the prefix)
    checksums TEXT NOT NULL,    -- JSON: algorithm -> base64 value
    acl TEXT NOT NULL,          -- JSON
    segments TEXT NOT NULL,     -- JSON: [[data_id, size], ...] concatenated in order
    parts TEXT NOT NULL,        -- JSON: part sizes of a multipart object ([] for a single PUT)
    PRIMARY KEY (bucket, key)
) WITHOUT ROWID;

CREATE TABLE uploads (
    upload_id TEXT PRIMARY KEY,
    bucket TEXT NOT NULL REFERENCES buckets(name),
    key TEXT NOT NULL,
    initiated REAL NOT NULL,
    owner_id TEXT NOT NULL,
    owner_name TEXT NOT NULL,
    spec TEXT NOT NULL          -- JSON: content type, headers, metadata, ACL, checksum algorithm
);
CREATE INDEX uploads_bucket ON uploads(bucket, key, initiated);

CREATE TABLE parts (
    upload_id TEXT NOT NULL REFERENCES uploads(upload_id) ON DELETE CASCADE,
    part_number INTEGER NOT NULL,
    data_id TEXT NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    last_modified REAL NOT NULL,
    checksums TEXT NOT NULL,
    PRIMARY KEY (upload_id, part_number)
) WITHOUT ROWID;
