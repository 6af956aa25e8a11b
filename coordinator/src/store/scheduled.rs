//! The scheduler's record of what it created: one row per (event, job, platform, run), written
//! in the transaction that creates the job, so that an event seen twice (a restart, a second
//! delivery) creates nothing twice.

use super::Write;
use super::db::params;
use super::jobs::{JobRow, NewJob};
use crate::error::{Error, Result};
use crate::model::Node;

/// One run the scheduler plans for one event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PlannedRun<'a> {
    /// The event's sequence number.
    pub(crate) event: i64,
    /// The `jobs:` key.
    pub(crate) job: &'a str,
    /// The platform (empty for none).
    pub(crate) platform: &'a str,
    /// The run number, from 0.
    pub(crate) run: u32,
}

/// What [`Write::schedule_run`] did.
#[derive(Debug)]
pub(crate) enum Scheduled {
    /// The job was created and queued.
    Created(Box<(Node, JobRow)>),
    /// The run was created before (the event was seen twice): nothing to do.
    Before,
    /// The store refused the job (its parent takes no children any more, a bad spec); the
    /// run is not recorded.
    Refused(Error),
}

impl Write<'_> {
    /// Creates the job of one planned run, exactly once: the run is recorded with the job it
    /// created, in this transaction. A job the store refuses leaves nothing behind.
    pub(crate) fn schedule_run(&mut self, run: PlannedRun<'_>, job: NewJob) -> Result<Scheduled> {
        let new_row = self.tx.execute(
            "INSERT INTO scheduled (event_seq, job, platform, run, node_id) \
             VALUES (?1, ?2, ?3, ?4, 0) ON CONFLICT DO NOTHING",
            params![run.event, run.job, run.platform, run.run],
        )?;
        if new_row == 0 {
            return Ok(Scheduled::Before);
        }
        match self.savepoint(|w| w.submit_job(job)) {
            Ok((node, row)) => {
                self.tx.execute(
                    "UPDATE scheduled SET node_id = ?5 WHERE event_seq = ?1 \
                     AND job = ?2 AND platform = ?3 AND run = ?4",
                    params![run.event, run.job, run.platform, run.run, node.id.0],
                )?;
                Ok(Scheduled::Created(Box::new((node, row))))
            }
            Err(e) => {
                self.tx.execute(
                    "DELETE FROM scheduled WHERE event_seq = ?1 AND job = ?2 \
                     AND platform = ?3 AND run = ?4",
                    params![run.event, run.job, run.platform, run.run],
                )?;
                Ok(Scheduled::Refused(e))
            }
        }
    }
}
