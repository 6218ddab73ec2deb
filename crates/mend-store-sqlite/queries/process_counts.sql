-- Process accounting for one step: `?2` new messages, `?3` = 1 when the input ended.
UPDATE processes
SET total    = total + ?2,
    open     = open + ?2 - ?3,
    done     = done + ?4,
    filtered = filtered + ?5,
    trash    = trash + ?6
WHERE id = ?1
