-- Scheduling and placement (issue 7).

-- Attributes the placement rules look at (JSON of rules::Attrs: tree, branch, job,
-- platform, kind, arch, ...), the run group of a job with `runs:` and a variant, and the
-- device type of the device a job was leased to.
ALTER TABLE jobs ADD COLUMN attrs TEXT NOT NULL DEFAULT '{}';
ALTER TABLE jobs ADD COLUMN run_group TEXT;
ALTER TABLE jobs ADD COLUMN variant TEXT;        -- device_type | device
ALTER TABLE jobs ADD COLUMN variant_mode TEXT;   -- strict | permissive
ALTER TABLE jobs ADD COLUMN device_type TEXT;
CREATE INDEX jobs_run_group ON jobs(run_group) WHERE run_group IS NOT NULL;

-- What the scheduler created: one row per (event, job, platform, run), written in the same
-- transaction as the job, so that nothing is created twice.
CREATE TABLE scheduled (
    event_seq INTEGER NOT NULL,
    job       TEXT    NOT NULL,
    platform  TEXT    NOT NULL,
    run       INTEGER NOT NULL,
    node_id   INTEGER NOT NULL,
    PRIMARY KEY (event_seq, job, platform, run)
);

-- Job statistics per signature (job name and device type) and lab: moving averages of the
-- queue wait and the run time, for placement and queue estimates.
CREATE TABLE job_stats (
    signature   TEXT    NOT NULL,
    lab         TEXT    NOT NULL,
    runs        INTEGER NOT NULL,
    wait_ms_avg REAL    NOT NULL,
    run_ms_avg  REAL    NOT NULL,
    updated     INTEGER NOT NULL,
    PRIMARY KEY (signature, lab)
);
