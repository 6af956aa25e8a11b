-- Health alerts: every alert mailed to a lab's contacts (a device gone bad, a lab
-- unreachable), one row per incident, so that a coordinator restart neither sends one
-- again nor loses one, and a device that flaps is mailed at most once per `repeat_after`.
CREATE TABLE health_alerts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    kind       TEXT    NOT NULL,               -- device_bad | lab_unreachable
    lab        TEXT    NOT NULL,
    device     TEXT    NOT NULL DEFAULT '',    -- '' for a lab's alert
    incident   INTEGER NOT NULL,               -- micros: the device's bad `since`, the lab's last_seen
    sent       INTEGER NOT NULL,               -- micros
    outcome    TEXT    NOT NULL,               -- sent | refused (an SMTP 5xx: not retried)
    recipients TEXT    NOT NULL,
    subject    TEXT    NOT NULL,
    UNIQUE (kind, lab, device, incident)
);
CREATE INDEX health_alerts_last ON health_alerts(kind, lab, device, sent);
-- Each time a lab came back after a silence: the report's offline time counts every one.
CREATE TABLE lab_silences (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    lab        TEXT    NOT NULL,
    started    INTEGER NOT NULL,               -- micros: its last call before the silence
    ended      INTEGER NOT NULL                -- micros: its first call after it
);
CREATE INDEX lab_silences_lab ON lab_silences(lab, ended);
