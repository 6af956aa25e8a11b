-- KernelCI pull-lab jobs: one row per KernelCI job node this installation took, written in
-- the transaction that creates its labwire job (or records why it was refused), so that a
-- restart or a KernelCI outage neither loses nor doubles a job or its callback.
CREATE TABLE kernelci_jobs (
    kci_node     TEXT    PRIMARY KEY,
    runtime      TEXT    NOT NULL,
    job_node     INTEGER REFERENCES nodes(id),
    -- running (labwire job under way, or ended and its callback due), refused (definition
    -- unusable; a callback saying so is due), posted (KernelCI accepted the callback),
    -- cancelled (KernelCI no longer wanted it)
    status       TEXT    NOT NULL,
    callback_url TEXT    NOT NULL,
    refusal      TEXT,
    tries        INTEGER NOT NULL DEFAULT 0,
    next_try     INTEGER,
    last_error   TEXT,
    created      INTEGER NOT NULL,
    updated      INTEGER NOT NULL
);
CREATE INDEX kernelci_jobs_status ON kernelci_jobs(status);
CREATE INDEX kernelci_jobs_job_node ON kernelci_jobs(job_node);
