-- Pipeline services.

-- Commits the trigger has seen, per tree and branch: one checkout node each, created in the
-- same transaction as the row, so a commit is never checked out twice (also across restarts).
CREATE TABLE trigger_commits (
    tree     TEXT    NOT NULL,
    branch   TEXT    NOT NULL,
    commit_hash TEXT NOT NULL,
    node_id  INTEGER NOT NULL REFERENCES nodes(id),
    seen     INTEGER NOT NULL,
    PRIMARY KEY (tree, branch, commit_hash)
);

-- Checkouts whose report was e-mailed, so a restart does not send it again.
CREATE TABLE mailed_reports (
    checkout INTEGER PRIMARY KEY REFERENCES nodes(id),
    sent     INTEGER NOT NULL
);

-- The timeout service looks for unfinished nodes past their timeout or holdoff.
CREATE INDEX nodes_state_timeout ON nodes(state, timeout);
CREATE INDEX nodes_state_holdoff ON nodes(state, holdoff);
