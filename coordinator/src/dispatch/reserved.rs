//! The devices that are reserved now, by lab: the dispatcher places no job on them, and each
//! lab's agent hears the list (in its Register and heartbeat answers, and on its session
//! stream when it changes). The store decides ([`crate::store::reservations`]); this copy is
//! replaced whole from it after every change and every sweep ([`crate::borrow`]), so other
//! replicas' reservations reach it within a sweep.

use crate::model::LabName;
use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// The reserved devices of every lab.
#[derive(Default)]
pub(crate) struct Reserved {
    by_lab: Mutex<HashMap<LabName, BTreeSet<String>>>,
}

impl Reserved {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<LabName, BTreeSet<String>>> {
        self.by_lab.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the whole picture with `all` (lab, device); returns the labs whose list
    /// changed, each with its new list.
    pub(crate) fn replace(
        &self,
        all: impl IntoIterator<Item = (String, String)>,
    ) -> Vec<(LabName, Vec<String>)> {
        let mut new: HashMap<LabName, BTreeSet<String>> = HashMap::new();
        for (lab, device) in all {
            new.entry(LabName::new(lab)).or_default().insert(device);
        }
        let mut map = self.lock();
        let mut changed = Vec::new();
        for (lab, set) in &new {
            if map.get(lab) != Some(set) {
                changed.push((lab.clone(), set.iter().cloned().collect()));
            }
        }
        for lab in map.keys() {
            if !new.contains_key(lab) {
                changed.push((lab.clone(), Vec::new()));
            }
        }
        *map = new;
        changed
    }

    /// Whether `device` of `lab` is reserved.
    pub(crate) fn contains(&self, lab: &str, device: &str) -> bool {
        self.lock()
            .get(&LabName::new(lab))
            .is_some_and(|s| s.contains(device))
    }

    /// The reserved devices of `lab`, by name.
    pub(crate) fn of(&self, lab: &LabName) -> Vec<String> {
        self.lock()
            .get(lab)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replacement_names_the_labs_that_changed() {
        let r = Reserved::default();
        let pair = |l: &str, d: &str| (l.to_string(), d.to_string());
        let changed = r.replace([pair("a", "b1"), pair("b", "x")]);
        assert_eq!(changed.len(), 2);
        assert!(r.contains("a", "b1") && !r.contains("a", "b2"));
        // Same picture: nothing changed.
        assert!(r.replace([pair("b", "x"), pair("a", "b1")]).is_empty());
        // Lab a emptied, lab b grew.
        let mut changed = r.replace([pair("b", "x"), pair("b", "y")]);
        changed.sort_by(|x, y| x.0.as_str().cmp(y.0.as_str()));
        assert_eq!(
            changed,
            vec![
                (LabName::new("a"), vec![]),
                (LabName::new("b"), vec!["x".to_string(), "y".to_string()])
            ]
        );
        assert_eq!(r.of(&LabName::new("a")), Vec::<String>::new());
    }
}
