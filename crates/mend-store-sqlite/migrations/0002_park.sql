-- mend store schema, version 2: parked messages, sync requests per key, releases, the store
-- tier of check caches, and rejected trash entries.
--
-- SQLite cannot change a CHECK constraint in place, so `messages` is rebuilt with the new
-- `parked` state and its park columns (the documented 12-step table rebuild, inside the
-- migration's transaction).

CREATE TABLE messages_v2 (
    id           TEXT    PRIMARY KEY,
    process_id   TEXT    NOT NULL REFERENCES processes (id),
    topology     TEXT    NOT NULL,
    version      TEXT    NOT NULL,
    node         TEXT    NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('queued', 'running', 'retry', 'limited', 'parked', 'done', 'filtered', 'trash', 'rejected')),
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
    updated_at   INTEGER NOT NULL,
    -- While parked: the key it waits for, the node it resumes at, and its deadline.
    park_key     TEXT,
    resume_node  TEXT,
    parked_until INTEGER
);
INSERT INTO messages_v2 (id, process_id, topology, version, node, state, payload, headers, context,
                         attempt, parent_id, available_at, claimed_by, lease_until, outcome, error,
                         created_at, updated_at)
SELECT id, process_id, topology, version, node, state, payload, headers, context,
       attempt, parent_id, available_at, claimed_by, lease_until, outcome, error,
       created_at, updated_at
FROM messages;
DROP TABLE messages;
ALTER TABLE messages_v2 RENAME TO messages;
-- `limited`: waiting for its system's capacity (rate, concurrency, a 429 pause).
CREATE INDEX messages_ready ON messages (topology, node, available_at) WHERE state IN ('queued', 'retry', 'limited');
CREATE INDEX messages_running ON messages (claimed_by, lease_until) WHERE state = 'running';
CREATE INDEX messages_process ON messages (process_id, state);
-- Release finds every message parked under a key; the sweep finds those past their deadline.
CREATE INDEX messages_parked ON messages (park_key) WHERE state = 'parked';
CREATE INDEX messages_park_deadline ON messages (parked_until) WHERE state = 'parked';

-- Parked messages per process (part of `open`), trash entries an operator rejected (closed;
-- no longer in `trash`), and for a sync process the key its clean end releases.
ALTER TABLE processes ADD COLUMN parked INTEGER NOT NULL DEFAULT 0;
ALTER TABLE processes ADD COLUMN rejected INTEGER NOT NULL DEFAULT 0;
ALTER TABLE processes ADD COLUMN release_key TEXT;
CREATE INDEX processes_release_key ON processes (release_key) WHERE release_key IS NOT NULL;

-- Attempts keyed by a sequence: an approved message starts its attempts again from 1 and its
-- earlier history stays.
CREATE TABLE attempts_v2 (
    seq              INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id       TEXT    NOT NULL,
    attempt          INTEGER NOT NULL,
    node             TEXT    NOT NULL,
    at               INTEGER NOT NULL,
    duration_ms      INTEGER NOT NULL,
    outcome          TEXT    NOT NULL,
    status           INTEGER,
    error            TEXT,
    response_excerpt TEXT
);
INSERT INTO attempts_v2 (message_id, attempt, node, at, duration_ms, outcome, status, error, response_excerpt)
SELECT message_id, attempt, node, at, duration_ms, outcome, status, error, response_excerpt
FROM attempts ORDER BY at;
DROP TABLE attempts;
ALTER TABLE attempts_v2 RENAME TO attempts;
CREATE INDEX attempts_message ON attempts (message_id, seq);

-- Operator actions on trash entries, for the audit trail.
CREATE TABLE trash_actions (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT    NOT NULL,
    action     TEXT    NOT NULL CHECK (action IN ('approve', 'reject', 'edit')),
    at         INTEGER NOT NULL,
    actor      TEXT    NOT NULL,
    note       TEXT
);
CREATE INDEX trash_actions_message ON trash_actions (message_id, seq);

-- One row per key whose sync is in flight: the row's existence is the single-flight mark.
CREATE TABLE park_keys (
    key             TEXT    PRIMARY KEY,
    sync_process_id TEXT,
    since           INTEGER NOT NULL,
    topology        TEXT    NOT NULL,
    node            TEXT    NOT NULL,
    -- On release, the key is marked present in this cache for this long.
    cache           TEXT,
    cache_ttl_ms    INTEGER
);

-- The last release of each key: a message that checked before it and parks after it resumes
-- at once (no lost wake-up).
CREATE TABLE releases (
    key         TEXT    PRIMARY KEY,
    released_at INTEGER NOT NULL,
    resumed     INTEGER NOT NULL,
    source      TEXT    NOT NULL,
    count       INTEGER NOT NULL
);

-- The store tier of check caches, shared by every engine on this store.
CREATE TABLE cache_entries (
    cache      TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    present    INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (cache, key)
);
