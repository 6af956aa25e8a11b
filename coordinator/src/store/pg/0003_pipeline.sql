-- PostgreSQL version of 0003_pipeline.sql.
CREATE TABLE trigger_commits (
    tree        TEXT   NOT NULL,
    branch      TEXT   NOT NULL,
    commit_hash TEXT   NOT NULL,
    node_id     BIGINT NOT NULL REFERENCES nodes(id),
    seen        BIGINT NOT NULL,
    PRIMARY KEY (tree, branch, commit_hash)
);

CREATE TABLE mailed_reports (
    checkout BIGINT PRIMARY KEY REFERENCES nodes(id),
    sent     BIGINT NOT NULL
);

CREATE INDEX nodes_state_timeout ON nodes(state, timeout);
CREATE INDEX nodes_state_holdoff ON nodes(state, holdoff);
