-- Board health: each device's health as its agent reported it, the admin's say over it
-- (maintenance, retired) and the health that counts (the admin's, else the agent's); and
-- every change of the health that counts, for events, alerts and the lab report.
CREATE TABLE device_health (
    lab            TEXT    NOT NULL,
    device         TEXT    NOT NULL,
    device_type    TEXT    NOT NULL DEFAULT '',
    health         TEXT    NOT NULL,               -- the health that counts
    reason         TEXT    NOT NULL DEFAULT '',
    reported       TEXT    NOT NULL DEFAULT 'good', -- as the agent reported it
    reported_reason TEXT   NOT NULL DEFAULT '',     -- and why
    admin          TEXT,                           -- maintenance | retired | NULL
    admin_reason   TEXT    NOT NULL DEFAULT '',
    last_check     INTEGER NOT NULL DEFAULT 0,     -- seconds since the epoch, 0: never
    failure_streak INTEGER NOT NULL DEFAULT 0,
    since          INTEGER NOT NULL,               -- micros: when `health` last changed
    resumed        INTEGER NOT NULL DEFAULT 0,     -- 1: an admin resumed it; tell its agent
    PRIMARY KEY (lab, device)
);
CREATE TABLE device_health_log (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    lab         TEXT    NOT NULL,
    device      TEXT    NOT NULL,
    device_type TEXT    NOT NULL DEFAULT '',
    at          INTEGER NOT NULL,                  -- micros
    from_health TEXT,                              -- NULL: first heard of
    to_health   TEXT    NOT NULL,
    reason      TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX device_health_log_lab ON device_health_log(lab, at);
