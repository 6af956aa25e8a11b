//! Reserved devices: the coordinator lends a device to a person (`labwire reserve`) and
//! tells the agent the lab's whole list of reserved devices in every Register and heartbeat
//! answer, and on the session stream when it changes. A reserved device takes no job and
//! no health check (a job it runs finishes first). When a device leaves the list (released,
//! or its lease ran out) the agent returns it to the pool: its health check runs first when
//! one is configured, else its driver powers it off ([`crate::driver::Driver::recover`]).
//! The list lives only in memory: after a restart the agent learns it again from its
//! Register answer, and claims no device for a check or a job before that.

//!
//! A board held after a failed job (`hold_on_failure`) is reserved here at once, before its
//! result is even sent, so that it takes no other job meanwhile; a list that does not name
//! it yet (sent before the coordinator stored the result) leaves it reserved for up to
//! [`HOLD_CONFIRM`], after which it goes back to the pool as a released one.

use super::Agent;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a held board waits for the coordinator's list to name it.
const HOLD_CONFIRM: Duration = Duration::from_secs(60);

impl Agent {
    /// The job on `device` failed and left it powered for its submitter: it takes no job
    /// until the coordinator's reservation of it ends.
    pub(super) fn hold(&self, device: &str) {
        let mut st = self.lock();
        st.reserved.insert(device.to_string());
        st.held.insert(device.to_string(), Instant::now());
    }

    /// Takes the coordinator's whole list of reserved devices; the devices that left it go
    /// back to the pool.
    pub(super) fn set_reserved(self: &Arc<Self>, list: &[String]) {
        let mut new: HashSet<String> = list.iter().cloned().collect();
        let (released, taken) = {
            let mut st = self.lock();
            st.reservations_known = true;
            // A held board stays reserved until the list names it (then the list decides),
            // or for HOLD_CONFIRM.
            st.held.retain(|d, since| {
                if new.contains(d) {
                    return false;
                }
                if since.elapsed() < HOLD_CONFIRM {
                    new.insert(d.clone());
                    return true;
                }
                tracing::warn!(device = %d, "the coordinator did not reserve the held board; it goes back to the pool");
                false
            });
            if st.reserved == new {
                return;
            }
            let released: Vec<String> = st.reserved.difference(&new).cloned().collect();
            let taken: Vec<String> = new.difference(&st.reserved).cloned().collect();
            st.reserved = new;
            (released, taken)
        };
        for d in &taken {
            tracing::info!(device = %d, "device reserved: it takes no job until it is released");
        }
        for d in released {
            self.return_to_pool(d);
        }
        self.bump();
    }

    /// A device's reservation ended: a health check runs first if one is configured, else
    /// the board is powered off; then it takes jobs again. A device still running a job
    /// (reserved and released while the job ran) is left alone.
    fn return_to_pool(self: &Arc<Self>, device: String) {
        super::console::detach_device(self, &device);
        let Some(d) = self.device(&device) else {
            return;
        };
        let check = self
            .cfg
            .health
            .check_for(&device, &d.info.device_type)
            .is_some();
        {
            let mut st = self.lock();
            let s = st.devs.entry(device.clone()).or_default();
            if s.busy > 0 || s.polling {
                tracing::info!(device = %device, "reservation ended; the device is busy, left as it is");
                return;
            }
            if check {
                st.checks_due.insert(device.clone());
                tracing::info!(device = %device, "reservation ended; its health check runs before it takes a job");
                return;
            }
            // Busy while it powers off: no job starts on a board being switched off.
            s.busy += 1;
        }
        let agent = self.clone();
        tokio::spawn(async move {
            match d.driver.recover().await {
                Ok(()) => {
                    tracing::info!(device = %device, "reservation ended; the board is off and back in the pool")
                }
                Err(e) => {
                    tracing::warn!(device = %device, error = %e, "reservation ended; could not power the board off")
                }
            }
            if let Some(s) = agent.lock().devs.get_mut(&device) {
                s.busy = s.busy.saturating_sub(1);
            }
            agent.bump();
        });
    }
}
