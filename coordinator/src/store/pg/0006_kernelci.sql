-- PostgreSQL version of 0006_kernelci.sql: KernelCI pull-lab jobs.
CREATE TABLE kernelci_jobs (
    kci_node     TEXT    PRIMARY KEY,
    runtime      TEXT    NOT NULL,
    job_node     BIGINT REFERENCES nodes(id),
    -- running (labwire job under way, or ended and its callback due), refused (definition
    -- unusable; a callback saying so is due), posted (KernelCI accepted the callback),
    -- cancelled (KernelCI no longer wanted it)
    status       TEXT    NOT NULL,
    callback_url TEXT    NOT NULL,
    refusal      TEXT,
    tries        INTEGER NOT NULL DEFAULT 0,
    next_try     BIGINT,
    last_error   TEXT,
    created      BIGINT NOT NULL,
    updated      BIGINT NOT NULL
);
CREATE INDEX kernelci_jobs_status ON kernelci_jobs(status);
CREATE INDEX kernelci_jobs_job_node ON kernelci_jobs(job_node);
