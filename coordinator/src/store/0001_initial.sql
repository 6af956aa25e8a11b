-- Nodes of the CI tree, with KernelCI's fields. Times are microseconds since the epoch.
CREATE TABLE nodes (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    kind          TEXT    NOT NULL,
    name          TEXT    NOT NULL,
    path          TEXT    NOT NULL,              -- JSON array of names
    grp           TEXT,
    parent        INTEGER REFERENCES nodes(id),
    state         TEXT    NOT NULL,
    result        TEXT,
    artifacts     TEXT    NOT NULL DEFAULT '{}', -- JSON object
    data          TEXT    NOT NULL DEFAULT '{}', -- JSON object
    created       INTEGER NOT NULL,
    updated       INTEGER NOT NULL,
    timeout       INTEGER,
    holdoff       INTEGER,
    owner         TEXT    NOT NULL DEFAULT '',
    submitter     TEXT    NOT NULL DEFAULT '',
    treeid        TEXT    NOT NULL DEFAULT '',
    retry_counter INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX nodes_parent ON nodes(parent);
CREATE INDEX nodes_kind_state ON nodes(kind, state);
CREATE INDEX nodes_name ON nodes(name);
CREATE INDEX nodes_created ON nodes(created);
CREATE INDEX nodes_updated ON nodes(updated);
CREATE INDEX nodes_treeid ON nodes(treeid);

-- The durable event log: one row per node change, written in the change's transaction.
-- AUTOINCREMENT: a sequence number is never reused, even after the newest row is deleted.
CREATE TABLE events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    time            INTEGER NOT NULL,
    node_id         INTEGER NOT NULL,
    kind            TEXT    NOT NULL,
    op              TEXT    NOT NULL,
    previous_state  TEXT,
    previous_result TEXT,
    node            TEXT    NOT NULL               -- JSON of the node after the change
);
CREATE INDEX events_time ON events(time);

-- Bookkeeping: key/value pairs such as the highest pruned event sequence number.
CREATE TABLE meta (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- The job queue: one entry per job node.
CREATE TABLE jobs (
    node_id       INTEGER PRIMARY KEY REFERENCES nodes(id),
    spec          BLOB    NOT NULL,               -- protobuf labwire.v1.JobSpec
    criteria      TEXT    NOT NULL,               -- JSON of the criteria, for matching
    runtime       TEXT    NOT NULL DEFAULT '',
    priority      INTEGER NOT NULL DEFAULT 0,
    status        TEXT    NOT NULL,               -- queued | leased | finished
    lease_owner   TEXT,                           -- lab name
    lease_session TEXT,
    lease_expires INTEGER,
    attempt       INTEGER NOT NULL DEFAULT 0,
    device        TEXT,
    queued_at     INTEGER NOT NULL,
    leased_at     INTEGER,
    started_at    INTEGER,
    finished_at   INTEGER
);
CREATE INDEX jobs_status ON jobs(status, priority DESC, node_id);

-- Which (job, attempt) results were applied: a repeated report is acknowledged, not applied.
CREATE TABLE job_reports (
    job      INTEGER NOT NULL,
    attempt  INTEGER NOT NULL,
    lab      TEXT    NOT NULL,
    reported INTEGER NOT NULL,
    PRIMARY KEY (job, attempt)
);

-- Job logs, per attempt, as appended chunks.
CREATE TABLE log_chunks (
    job     INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    offset  INTEGER NOT NULL,
    data    BLOB    NOT NULL,
    PRIMARY KEY (job, attempt, offset)
);
CREATE TABLE logs (
    job     INTEGER NOT NULL,
    attempt INTEGER NOT NULL,
    length  INTEGER NOT NULL,
    PRIMARY KEY (job, attempt)
);

-- Labs and their client certificates.
CREATE TABLE labs (
    name       TEXT PRIMARY KEY,
    created    INTEGER NOT NULL,
    last_seen  INTEGER,
    devices    TEXT    NOT NULL DEFAULT '[]',   -- JSON array of advertised devices
    free_slots INTEGER NOT NULL DEFAULT 0,
    revoked_at INTEGER
);
CREATE TABLE lab_certs (
    fingerprint TEXT PRIMARY KEY,               -- SHA-256 of the DER certificate, hex
    lab         TEXT NOT NULL REFERENCES labs(name),
    issued      INTEGER NOT NULL,
    not_after   INTEGER,
    revoked_at  INTEGER
);
CREATE INDEX lab_certs_lab ON lab_certs(lab);

-- Client tokens, stored as SHA-256 hashes.
CREATE TABLE tokens (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    name       TEXT    NOT NULL UNIQUE,
    hash       TEXT    NOT NULL UNIQUE,
    scopes     TEXT    NOT NULL,               -- comma-separated: read, submit, admin
    created    INTEGER NOT NULL,
    revoked_at INTEGER
);
