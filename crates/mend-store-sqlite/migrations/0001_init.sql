-- mend store schema, version 1. Times are Unix milliseconds; ids are UUIDv7 text.

-- Every topology version that ran, so a message's `version` can be read back.
CREATE TABLE topologies (
    name      TEXT    NOT NULL,
    version   TEXT    NOT NULL,
    source    TEXT    NOT NULL,
    loaded_at INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);

-- One row per process. The counters are kept in the same transaction as every step, so
-- `total = open + done + filtered + trash` holds at every commit.
CREATE TABLE processes (
    id                TEXT    PRIMARY KEY,
    topology          TEXT    NOT NULL,
    version           TEXT    NOT NULL,
    event             TEXT    NOT NULL,
    parent_process_id TEXT,
    parent_message_id TEXT,
    state             TEXT    NOT NULL CHECK (state IN ('running', 'done')),
    total             INTEGER NOT NULL DEFAULT 0,
    open              INTEGER NOT NULL DEFAULT 0,
    done              INTEGER NOT NULL DEFAULT 0,
    filtered          INTEGER NOT NULL DEFAULT 0,
    trash             INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    finished_at       INTEGER
);
CREATE INDEX processes_parent ON processes (parent_process_id) WHERE parent_process_id IS NOT NULL;
CREATE INDEX processes_created ON processes (created_at);

-- Messages, live and finished. Finished rows stay for reports and traces.
CREATE TABLE messages (
    id           TEXT    PRIMARY KEY,
    process_id   TEXT    NOT NULL REFERENCES processes (id),
    topology     TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    node         TEXT    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'retry', 'done', 'filtered', 'trash')),
    payload      TEXT    NOT NULL,
    headers      TEXT    NOT NULL,
    context      TEXT    NOT NULL,
    attempt      INTEGER NOT NULL DEFAULT 0,
    parent_id    TEXT,
    available_at INTEGER NOT NULL,
    claimed_by   TEXT,
    lease_until  INTEGER,
    outcome      TEXT,
    error        TEXT,
    created_at   INTEGER NOT NULL,
    updated_at   INTEGER NOT NULL
);
-- Claiming reads only this partial index: ready messages of one node in due order.
CREATE INDEX messages_ready ON messages (topology, node, available_at) WHERE state IN ('queued', 'retry');
CREATE INDEX messages_running ON messages (claimed_by, lease_until) WHERE state = 'running';
CREATE INDEX messages_process ON messages (process_id, state);

-- Every failed or retried try, for the trash view.
CREATE TABLE attempts (
    message_id       TEXT    NOT NULL,
    attempt          INTEGER NOT NULL,
    node             TEXT    NOT NULL,
    at               INTEGER NOT NULL,
    duration_ms      INTEGER NOT NULL,
    outcome          TEXT    NOT NULL,
    status           INTEGER,
    error            TEXT,
    response_excerpt TEXT,
    PRIMARY KEY (message_id, attempt)
);

-- Outcome counts per process and node: the per-node part of a process report.
CREATE TABLE process_node_stats (
    process_id TEXT    NOT NULL,
    topology   TEXT    NOT NULL,
    node       TEXT    NOT NULL,
    outcome    TEXT    NOT NULL,
    count      INTEGER NOT NULL,
    PRIMARY KEY (process_id, topology, node, outcome)
);

-- One row per fired cron slot: the primary key makes a slot fire once across all engines.
CREATE TABLE cron_fires (
    topology   TEXT    NOT NULL,
    event      TEXT    NOT NULL,
    slot       INTEGER NOT NULL,
    process_id TEXT    NOT NULL,
    PRIMARY KEY (topology, event, slot)
);
