-- Object versions: a key maps to its versions (newest first by `ordinal`), each an object or a delete marker.
-- An object written while versioning was never enabled or is suspended has version id 'null' (at most one per
-- key). `latest` marks the current version of a key; a listing of current objects reads the partial index.
-- Object Lock state lives with each version; bucket versioning, Object Lock and lifecycle with the bucket.
ALTER TABLE buckets ADD COLUMN versioning TEXT NOT NULL DEFAULT '';    -- '', 'Enabled' or 'Suspended'
ALTER TABLE buckets ADD COLUMN object_lock TEXT NOT NULL DEFAULT '';   -- '' (off) or JSON: default retention
ALTER TABLE buckets ADD COLUMN lifecycle TEXT NOT NULL DEFAULT '';     -- '' (none) or JSON: the rules

CREATE TABLE versions (
    bucket TEXT NOT NULL REFERENCES buckets(name),
    key TEXT NOT NULL,
    ordinal INTEGER NOT NULL,       -- smaller is newer: each new version of a key takes MIN(ordinal) - 1
    version_id TEXT NOT NULL,       -- 'null' or a generated id
    latest INTEGER NOT NULL,        -- 1 for the current version of the key
    delete_marker INTEGER NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    last_modified REAL NOT NULL,
    owner_id TEXT NOT NULL,
    owner_name TEXT NOT NULL,
    content_type TEXT NOT NULL,
    headers TEXT NOT NULL,
    meta TEXT NOT NULL,
    checksums TEXT NOT NULL,
    acl TEXT NOT NULL,
    segments TEXT NOT NULL,
    parts TEXT NOT NULL,
    lock_mode TEXT NOT NULL DEFAULT '',      -- '', 'GOVERNANCE' or 'COMPLIANCE'
    lock_until REAL NOT NULL DEFAULT 0,      -- retain-until date (epoch seconds)
    legal_hold INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (bucket, key, ordinal)
) WITHOUT ROWID;
CREATE UNIQUE INDEX versions_id ON versions(bucket, key, version_id);
CREATE INDEX versions_current ON versions(bucket, key) WHERE latest = 1 AND delete_marker = 0;

INSERT INTO versions (bucket, key, ordinal, version_id, latest, delete_marker, size, etag, last_modified, owner_id,
                      owner_name, content_type, headers, meta, checksums, acl, segments, parts)
SELECT bucket, key, 0, 'null', 1, 0, size, etag, last_modified, owner_id, owner_name, content_type, headers, meta,
       checksums, acl, segments, parts
FROM objects;
DROP TABLE objects;
