-- Bucket-level configurations (policy, public access block, CORS, tagging, logging): one document per bucket
-- and kind, stored as the S3 layer serialised it. Gone with the bucket.
CREATE TABLE bucket_configs (
    bucket TEXT NOT NULL REFERENCES buckets(name) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    document TEXT NOT NULL,
    PRIMARY KEY (bucket, kind)
) WITHOUT ROWID;
