-- mend store schema, version 3: what operators look at.

-- Outcome counts per topology × node × outcome × minute, for the heatmap. Written in the
-- same transaction as each step; rows older than the retention are deleted by the engine.
CREATE TABLE node_minutes (
    minute   INTEGER NOT NULL,
    topology TEXT    NOT NULL,
    node     TEXT    NOT NULL,
    outcome  TEXT    NOT NULL,
    count    INTEGER NOT NULL,
    PRIMARY KEY (minute, topology, node, outcome)
);

-- The payload and headers a trash entry had before an operator edited them.
ALTER TABLE trash_actions ADD COLUMN previous TEXT;

-- Listing processes newest first, by topology.
CREATE INDEX processes_topology ON processes (topology, created_at);

-- Flood guard: a failure identical to many recent ones (same process, node and error) is
-- kept but collapsed under the first of them, so the trash view shows it once, with a count.
ALTER TABLE messages ADD COLUMN flood_of TEXT;
CREATE INDEX messages_flood ON messages (flood_of) WHERE flood_of IS NOT NULL;
