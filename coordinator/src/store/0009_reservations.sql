-- Reservations: a device lent to a person under a lease that ends by itself. A live
-- reservation has `ended` NULL; at most one per device. Ended ones are kept as the device's
-- history (who had it, when, how it ended).
CREATE TABLE reservations (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    lab         TEXT    NOT NULL,
    device      TEXT    NOT NULL,
    owner       TEXT    NOT NULL,                  -- the token's name
    reason      TEXT    NOT NULL DEFAULT '',
    created     INTEGER NOT NULL,                  -- micros
    expires     INTEGER NOT NULL,                  -- micros
    ended       INTEGER,                           -- micros; NULL: live
    end_reason  TEXT                               -- released | expired
);
CREATE UNIQUE INDEX reservations_live ON reservations(lab, device) WHERE ended IS NULL;
CREATE INDEX reservations_expires ON reservations(expires) WHERE ended IS NULL;
