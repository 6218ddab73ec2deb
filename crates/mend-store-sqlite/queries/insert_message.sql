INSERT INTO messages (id, process_id, topology, version, node, state, payload, headers, context,
                      attempt, parent_id, available_at, created_at, updated_at)
VALUES (?1, ?2, ?3, ?4, ?5, 'queued', ?6, ?7, ?8, 0, ?9, ?10, ?11, ?11)
