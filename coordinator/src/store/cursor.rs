//! Named positions in the event log, kept in the store: where a service that follows the log
//! (the scheduler, the report mailer) stopped, so that a restart resumes there. A service
//! moves its cursor in the same transaction as what it did for the event, so an event is
//! handled once even across a crash.

use super::Write;
use super::db::params;
use super::events::last_seq;
use crate::error::{Error, Result};

/// A service's stored position in the event log: the sequence number of the last event it
/// handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct EventCursor(&'static str);

impl EventCursor {
    /// The scheduler's cursor.
    pub(crate) const SCHEDULER: EventCursor = EventCursor("scheduler_cursor");
    /// The report mailer's cursor.
    pub(crate) const REPORT_MAIL: EventCursor = EventCursor("report_mail_cursor");

    /// The cursor's key in the store.
    pub(crate) fn name(self) -> &'static str {
        self.0
    }
}

impl Write<'_> {
    /// Where `cursor` stands. The first time, that is the current end of the log, and it is
    /// stored: a service added to a running coordinator does not replay history.
    pub(crate) fn start_cursor(&mut self, cursor: EventCursor) -> Result<i64> {
        let stored: Option<String> = self.tx.query_opt(
            "SELECT value FROM meta WHERE key = ?1",
            params![cursor.name()],
            |r| r.get(0),
        )?;
        match stored {
            Some(v) => v
                .parse()
                .map_err(|e| Error::Corrupt(format!("event cursor {}: `{v}`: {e}", cursor.name()))),
            None => {
                let end = last_seq(self.tx)?;
                self.move_cursor(cursor, end)?;
                Ok(end)
            }
        }
    }

    /// Moves `cursor` to `seq`, the last event handled.
    pub(crate) fn move_cursor(&mut self, cursor: EventCursor, seq: i64) -> Result<()> {
        self.tx.execute(
            "INSERT INTO meta (key, value) VALUES (?1, ?2) \
             ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            params![cursor.name(), seq.to_string()],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::NodeKind;
    use crate::store::{NewNode, temp_store};

    #[test]
    fn a_cursor_starts_at_the_end_then_stays_where_it_was_moved() {
        let (_d, store) = temp_store();
        store
            .write_blocking(|w| w.create_node(NewNode::new(NodeKind::Checkout, "before")))
            .unwrap();
        let c = EventCursor::SCHEDULER;
        assert_eq!(store.write_blocking(move |w| w.start_cursor(c)).unwrap(), 1);
        store
            .write_blocking(|w| w.create_node(NewNode::new(NodeKind::Checkout, "after")))
            .unwrap();
        assert_eq!(store.write_blocking(move |w| w.start_cursor(c)).unwrap(), 1);
        store.write_blocking(move |w| w.move_cursor(c, 2)).unwrap();
        assert_eq!(store.write_blocking(move |w| w.start_cursor(c)).unwrap(), 2);
        // Another service's cursor is its own.
        let m = EventCursor::REPORT_MAIL;
        assert_eq!(store.write_blocking(move |w| w.start_cursor(m)).unwrap(), 2);
    }
}
