//! Reserved devices: the coordinator lends a device to a person (`labwire reserve`) and
//! tells the agent the lab's whole list of reserved devices in every Register and heartbeat
//! answer, and on the session stream when it changes. A reserved device takes no job and
//! no health check (a job it runs finishes first). When a device leaves the list (released,
//! or its lease ran out) the agent returns it to the pool: its health check runs first when
//! one is configured, else its driver powers it off ([`crate::driver::Driver::recover`]).
//! The list lives only in memory: after a restart the agent learns it again from its
//! Register answer, and claims no device for a check or a job before that.

use super::Agent;
use std::collections::HashSet;
use std::sync::Arc;

impl Agent {
    /// Takes the coordinator's whole list of reserved devices; the devices that left it go
    /// back to the pool.
    pub(super) fn set_reserved(self: &Arc<Self>, list: &[String]) {
        let new: HashSet<String> = list.iter().cloned().collect();
        let (released, taken) = {
            let mut st = self.lock();
            st.reservations_known = true;
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
