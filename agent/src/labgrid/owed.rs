//! What a Labgrid source shares with the jobs on its places: the latest reading of the
//! coordinator (for the console, the power check and the hold watch) and the journal of
//! places the agent owes a power-off or a release.
//!
//! The journal (`state_dir/labgrid/NAME.json`) gets a place before its board is powered on
//! (`running`); a job that gives the place back cleanly takes it out again. A power-off or
//! release that fails, a hold lost under a job, an agent killed mid-job leave it `owed`: the
//! source retries with back-off until the board is off and the place released (across agent
//! restarts: an entry read back at start is owed), and does not offer the place until then.

use super::view::Snapshot;
use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tokio::sync::{Notify, watch};

/// Why the agent has a place in its journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Debt {
    /// A job of this agent runs on it (read back after a restart as owed).
    Running,
    /// The agent owes it a power-off (if `power_off`) and a release.
    Owed,
}

/// One journal entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    /// Running or owed.
    pub debt: Debt,
    /// Whether the board may be on (a power-off is owed).
    pub power_off: bool,
}

/// The journal of one source.
pub(crate) struct Journal {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl Journal {
    /// Reads (or starts) the journal at `path`; entries of jobs that ran then are owed now.
    pub(crate) fn open(path: &Path) -> anyhow::Result<Journal> {
        let mut entries: BTreeMap<String, Entry> = match std::fs::read(path) {
            Ok(b) => serde_json::from_slice(&b)
                .with_context(|| format!("cannot read the Labgrid journal {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => {
                return Err(e).with_context(|| {
                    format!("cannot read the Labgrid journal {}", path.display())
                });
            }
        };
        for e in entries.values_mut() {
            e.debt = Debt::Owed;
        }
        Ok(Journal {
            path: path.to_path_buf(),
            entries: Mutex::new(entries),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn save(&self, map: &BTreeMap<String, Entry>) {
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent() {
                crate::state::private_dir(dir)
                    .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
            }
            let tmp = self.path.with_extension("json.tmp");
            let mut f = crate::state::private_create().open(&tmp)?;
            std::io::Write::write_all(&mut f, &serde_json::to_vec_pretty(map)?)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &self.path)
        };
        if let Err(e) = write() {
            tracing::error!(journal = %self.path.display(), error = %e, "cannot write the Labgrid journal");
        }
    }

    /// Sets a place's entry.
    pub(crate) fn set(&self, place: &str, debt: Debt, power_off: bool) {
        let mut m = self.lock();
        m.insert(place.to_string(), Entry { debt, power_off });
        self.save(&m);
    }

    /// Takes a place out of the journal (given back, or not ours to give back).
    pub(crate) fn remove(&self, place: &str) {
        let mut m = self.lock();
        if m.remove(place).is_some() {
            self.save(&m);
        }
    }

    /// The places owed now, with whether a power-off is owed.
    pub(crate) fn owed(&self) -> Vec<(String, bool)> {
        self.lock()
            .iter()
            .filter(|(_, e)| e.debt == Debt::Owed)
            .map(|(p, e)| (p.clone(), e.power_off))
            .collect()
    }

    /// Whether the agent owes this place something (it is not offered then).
    pub(crate) fn is_owed(&self, place: &str) -> bool {
        self.lock().get(place).is_some_and(|e| e.debt == Debt::Owed)
    }
}

/// What a source shares with the drivers of its places.
pub(crate) struct Shared {
    /// The latest reading of the coordinator; `None` until one succeeds, or while it fails.
    pub snapshot: watch::Sender<Option<Arc<Snapshot>>>,
    /// Places owed a power-off or release.
    pub journal: Journal,
    /// Wakes the source's reading: the journal changed (a place to offer again or not).
    pub poke: Notify,
    /// Wakes the settling task: a place became owed.
    pub owed_added: Notify,
}

impl Shared {
    /// Shared state with the journal at `path`.
    pub(crate) fn open(path: &Path) -> anyhow::Result<Arc<Shared>> {
        Ok(Arc::new(Shared {
            snapshot: watch::channel(None).0,
            journal: Journal::open(path)?,
            poke: Notify::new(),
            owed_added: Notify::new(),
        }))
    }

    /// Marks a place owed and wakes the settling task and the source.
    pub(crate) fn owe(&self, place: &str, power_off: bool) {
        self.journal.set(place, Debt::Owed, power_off);
        self.owed_added.notify_one();
        self.poke.notify_one();
    }

    /// The latest reading, if any.
    pub(crate) fn latest(&self) -> Option<Arc<Snapshot>> {
        self.snapshot.borrow().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_place_is_owed_after_a_restart_and_the_journal_survives() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("labgrid/main.json");
        let j = Journal::open(&path).unwrap();
        j.set("board-1", Debt::Running, true);
        j.set("board-2", Debt::Owed, false);
        assert!(!j.is_owed("board-1"));
        assert!(j.is_owed("board-2"));
        assert_eq!(j.owed(), [("board-2".to_string(), false)]);
        drop(j);
        let j = Journal::open(&path).unwrap();
        assert_eq!(
            j.owed(),
            [
                ("board-1".to_string(), true),
                ("board-2".to_string(), false)
            ]
        );
        j.remove("board-1");
        j.remove("board-2");
        assert!(Journal::open(&path).unwrap().owed().is_empty());
        std::fs::write(&path, "{").unwrap();
        let e = Journal::open(&path).err().unwrap();
        assert!(format!("{e:#}").contains("labgrid/main.json"), "{e:#}");
    }
}
