-- Identity and the CLC's per-account resources of the first half: accounts, users, access keys, user
-- certificates, key pairs, security groups and their rules, tags. Times are epoch seconds (REAL).

CREATE TABLE accounts (
    account_id TEXT PRIMARY KEY,            -- 12 digits, EC2's owner id
    name TEXT NOT NULL UNIQUE,
    is_admin INTEGER NOT NULL DEFAULT 0,    -- the cloud administrators' account ("eucalyptus")
    enabled INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL
);

CREATE TABLE users (
    user_id TEXT PRIMARY KEY,
    account_id TEXT NOT NULL REFERENCES accounts(account_id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL,
    UNIQUE (account_id, name)
);

CREATE TABLE access_keys (
    access_key_id TEXT PRIMARY KEY,
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    secret_key TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL
);
CREATE INDEX access_keys_user ON access_keys(user_id);

CREATE TABLE certificates (
    certificate_id TEXT PRIMARY KEY,        -- SHA-256 of the DER certificate, hex
    user_id TEXT NOT NULL REFERENCES users(user_id) ON DELETE CASCADE,
    pem TEXT NOT NULL,
    active INTEGER NOT NULL DEFAULT 1,
    created_at REAL NOT NULL
);
CREATE INDEX certificates_user ON certificates(user_id);

CREATE TABLE key_pairs (
    key_pair_id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    name TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    key_type TEXT NOT NULL DEFAULT 'rsa',
    public_key TEXT NOT NULL,               -- OpenSSH format, for instance metadata
    created_at REAL NOT NULL,
    UNIQUE (owner_id, name)
);

CREATE TABLE security_groups (
    group_id TEXT PRIMARY KEY,
    owner_id TEXT NOT NULL,
    name TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    UNIQUE (owner_id, name)
);

-- Ingress rules (EC2-Classic has no egress rules). One row per (protocol, ports, source); a source is a CIDR
-- or another group (by id; its owner and name are kept for answers).
CREATE TABLE security_group_rules (
    rule_id INTEGER PRIMARY KEY AUTOINCREMENT,
    group_id TEXT NOT NULL REFERENCES security_groups(group_id) ON DELETE CASCADE,
    protocol TEXT NOT NULL,                 -- tcp, udp, icmp, -1 or a protocol number
    from_port INTEGER NOT NULL,             -- -1 when not applicable
    to_port INTEGER NOT NULL,
    cidr TEXT NOT NULL DEFAULT '',
    source_group_id TEXT NOT NULL DEFAULT '',
    UNIQUE (group_id, protocol, from_port, to_port, cidr, source_group_id)
);
CREATE INDEX security_group_rules_source ON security_group_rules(source_group_id);

CREATE TABLE tags (
    resource_id TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL DEFAULT '',
    owner_id TEXT NOT NULL,
    resource_type TEXT NOT NULL,
    PRIMARY KEY (resource_id, key)
);
CREATE INDEX tags_owner_key ON tags(owner_id, key);
