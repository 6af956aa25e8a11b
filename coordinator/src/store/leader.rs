//! Leadership: which coordinator replica runs the services that must run once across
//! replicas (scheduler, trigger, timeouts, lease sweeps, event pruning, reports). A replica
//! holds a role until `expires` and renews it well before; when it dies, another replica
//! takes the role over once the time has run out. With one coordinator (SQLite), it simply
//! always holds every role.

use super::Write;
use super::db::params;
use crate::error::Result;
use chrono::Duration;

impl Write<'_> {
    /// Takes or renews `role` for `holder` until now + `ttl`, unless another holder's claim
    /// is still current. Returns whether `holder` holds the role now.
    pub(crate) fn try_lead(&mut self, role: &str, holder: &str, ttl: Duration) -> Result<bool> {
        let now = super::micros(self.now);
        let until = super::micros(self.now + ttl);
        self.tx.execute(
            "INSERT INTO leadership (name, holder, expires) VALUES (?1, ?2, ?3) \
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, expires = excluded.expires \
             WHERE leadership.holder = excluded.holder OR leadership.expires < ?4",
            params![role, holder, until, now],
        )?;
        let current: String = self.tx.query_row(
            "SELECT holder FROM leadership WHERE name = ?1",
            params![role],
            |r| r.get(0),
        )?;
        Ok(current == holder)
    }

    /// Clears `role` whoever holds it (a single SQLite coordinator after a crash: nobody
    /// else can hold it).
    pub(crate) fn resign_any(&mut self, role: &str) -> Result<()> {
        self.tx
            .execute("DELETE FROM leadership WHERE name = ?1", params![role])?;
        Ok(())
    }

    /// Gives `role` up if `holder` holds it (a replica that stops cleanly), so another
    /// replica takes over at once instead of after the time-out.
    pub(crate) fn resign(&mut self, role: &str, holder: &str) -> Result<bool> {
        Ok(self.tx.execute(
            "DELETE FROM leadership WHERE name = ?1 AND holder = ?2",
            params![role, holder],
        )? == 1)
    }
}

#[cfg(test)]
mod tests {
    use crate::store::temp_store;
    use chrono::Duration;

    #[test]
    fn one_leader_until_it_expires_or_resigns() {
        let (_d, store) = temp_store();
        let lead = |who: &'static str, ttl: Duration| {
            store
                .write_blocking(move |w| w.try_lead("services", who, ttl))
                .unwrap()
        };
        let ttl = Duration::seconds(10);
        assert!(lead("a", ttl));
        assert!(!lead("b", ttl));
        // Renewal by the holder.
        assert!(lead("a", ttl));
        // An expired claim is taken over.
        assert!(lead("a", Duration::microseconds(-1)));
        assert!(lead("b", ttl));
        assert!(!lead("a", ttl));
        // Resigning frees it at once.
        assert!(store.write_blocking(|w| w.resign("services", "b")).unwrap());
        assert!(lead("a", ttl));
        // `a` holds it now.
        assert!(!lead("b", ttl));
    }
}
