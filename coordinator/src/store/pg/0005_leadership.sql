-- Which coordinator replica runs the services that must run once (scheduler, trigger,
-- timeouts, lease sweeps, reports): one row per role, held until `expires` (microseconds
-- since the epoch) and renewed by its holder; another replica takes it over once it expired.
CREATE TABLE leadership (
    name    TEXT   PRIMARY KEY,
    holder  TEXT   NOT NULL,
    expires BIGINT NOT NULL
);
