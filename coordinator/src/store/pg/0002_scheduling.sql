-- PostgreSQL version of 0002_scheduling.sql.
ALTER TABLE jobs ADD COLUMN attrs TEXT NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN run_group TEXT;
ALTER TABLE jobs ADD COLUMN variant TEXT;
ALTER TABLE jobs ADD COLUMN variant_mode TEXT;
ALTER TABLE jobs ADD COLUMN device_type TEXT;
CREATE INDEX jobs_run_group ON jobs(run_group) WHERE run_group IS NOT NULL;

CREATE TABLE scheduled (
    event_seq BIGINT NOT NULL,
    job       TEXT   NOT NULL,
    platform  TEXT   NOT NULL,
    run       BIGINT NOT NULL,
    node_id   BIGINT NOT NULL,
    PRIMARY KEY (event_seq, job, platform, run)
);

CREATE TABLE job_stats (
    signature   TEXT             NOT NULL,
    lab         TEXT             NOT NULL,
    runs        BIGINT           NOT NULL,
    wait_ms_avg DOUBLE PRECISION NOT NULL,
    run_ms_avg  DOUBLE PRECISION NOT NULL,
    updated     BIGINT           NOT NULL,
    PRIMARY KEY (signature, lab)
);
