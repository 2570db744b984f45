-- Clusters registered with RegisterCluster (services/cloud_controller/clusters.py); KOALA_CLUSTERS adds more.
CREATE TABLE clusters (
    zone TEXT PRIMARY KEY,
    url TEXT NOT NULL UNIQUE,
    cc_id TEXT NOT NULL DEFAULT '',
    registered_at REAL NOT NULL
);
