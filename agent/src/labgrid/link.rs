//! The agent's gRPC session with a Labgrid coordinator (its protocol of Labgrid 25 and
//! later). One connection carries everything: the coordinator ties an acquire to the
//! session that the same connection opened (`StartupDone` with the agent's `host/user`), so
//! the session and the requests share one channel, and a new connection opens a new session
//! before any request goes on it.
//!
//! The session subscribes to every place and every resource; the coordinator sends the
//! current state, then each change as it happens (a place acquired or released, an exporter
//! gone, a resource back). Each change becomes a new [`Snapshot`] in the shared reading
//! within milliseconds; `None` while there is no session. A `Sync` round trip (answered
//! after everything queued before it) makes "the reading includes what the coordinator
//! knew when I asked" exact: after an acquire, a release, and before a result is given.

use super::view::{Place, Resource, Snapshot};
use labwire_proto::labgrid as pb;
use pb::coordinator_client::CoordinatorClient;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint};

use super::client::LabgridError;

/// The session, while there is one.
#[derive(Clone)]
struct Live {
    /// The connection the session is on (requests must use it).
    channel: Channel,
    /// Messages into the session's stream.
    tx: mpsc::UnboundedSender<pb::ClientInMessage>,
}

/// A session with one Labgrid coordinator.
pub(crate) struct Link {
    /// `http://HOST:PORT`.
    url: String,
    /// `host/user`: who the session acts as.
    identity: String,
    /// The limit of one request (and of connecting).
    timeout: Duration,
    live: Mutex<Option<Live>>,
    /// `Sync` requests waiting for their answer.
    syncs: Mutex<HashMap<u64, oneshot::Sender<()>>>,
    next_sync: AtomicU64,
}

/// What the coordinator said so far on one session.
#[derive(Default)]
struct State {
    places: BTreeMap<String, Place>,
    resources: BTreeMap<(String, String, String), Resource>,
}

impl State {
    fn apply(&mut self, update: pb::UpdateResponse) {
        use pb::update_response::Kind;
        match update.kind {
            Some(Kind::Resource(r)) => {
                let path = r.path.clone().unwrap_or_default();
                let key = (
                    path.exporter_name.clone().unwrap_or_default(),
                    path.group_name.clone(),
                    path.resource_name.clone(),
                );
                self.resources.insert(key, resource_of(r));
            }
            Some(Kind::DelResource(p)) => {
                self.resources.remove(&(
                    p.exporter_name.unwrap_or_default(),
                    p.group_name,
                    p.resource_name,
                ));
            }
            Some(Kind::Place(p)) => {
                self.places.insert(p.name.clone(), place_of(p));
            }
            Some(Kind::DelPlace(name)) => {
                self.places.remove(&name);
            }
            None => {}
        }
    }

    fn snapshot(&self) -> Snapshot {
        Snapshot {
            at: tokio::time::Instant::now(),
            places: self.places.values().cloned().collect(),
            resources: self.resources.values().cloned().collect(),
        }
    }
}

/// A place as the protocol gives it; matches as `exporter/group/class[/name]` patterns.
fn place_of(p: pb::Place) -> Place {
    Place {
        name: p.name,
        tags: p.tags.into_iter().collect(),
        held_resources: p.acquired_resources.len(),
        acquired: p.acquired.filter(|a| !a.is_empty()),
        matches: p
            .matches
            .into_iter()
            .map(|m| match m.name {
                Some(n) => format!("{}/{}/{}/{n}", m.exporter, m.group, m.cls),
                None => format!("{}/{}/{}", m.exporter, m.group, m.cls),
            })
            .collect(),
    }
}

/// A resource as the protocol gives it: its path and the parameters the agent reads.
fn resource_of(r: pb::Resource) -> Resource {
    use pb::map_value::Kind;
    let path = r.path.unwrap_or_default();
    let text = |k: &str| match r.params.get(k).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => Some(s.clone()),
        _ => None,
    };
    let port = match r.params.get("port").and_then(|v| v.kind.as_ref()) {
        Some(Kind::IntValue(i)) => u16::try_from(*i).ok(),
        Some(Kind::UintValue(u)) => u16::try_from(*u).ok(),
        _ => None,
    };
    Resource {
        path: [
            path.exporter_name.unwrap_or_default(),
            path.group_name,
            r.cls,
            path.resource_name,
        ],
        avail: r.avail,
        host: text("host"),
        port,
        protocol: text("protocol"),
    }
}

fn message(kind: pb::client_in_message::Kind) -> pb::ClientInMessage {
    pb::ClientInMessage { kind: Some(kind) }
}

impl Link {
    /// A link to the coordinator at `HOST:PORT`, acting as `identity` (`host/user`).
    pub(crate) fn new(address: &str, identity: String, timeout: Duration) -> Link {
        Link {
            url: format!("http://{address}"),
            identity,
            timeout,
            live: Mutex::new(None),
            syncs: Mutex::new(HashMap::new()),
            next_sync: AtomicU64::new(1),
        }
    }

    fn live(&self, what: &str) -> Result<Live, LabgridError> {
        self.live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
            .ok_or_else(|| LabgridError::Down {
                what: what.to_string(),
                msg: "no session with the Labgrid coordinator (it cannot be reached, or the session is being opened again)".into(),
            })
    }

    fn set_live(&self, live: Option<Live>) {
        *self
            .live
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = live;
    }

    /// Keeps a session open until `stop`, opening a new one with back-off (0.2 s to 5 s)
    /// when it ends; every change goes into `out`.
    pub(crate) async fn follow(
        &self,
        out: &watch::Sender<Option<Arc<Snapshot>>>,
        stop: &CancellationToken,
    ) {
        let mut failures = 0u32;
        loop {
            let r = self.session(out, stop, &mut failures).await;
            self.set_live(None);
            // Waiters of the ended session get no answer: they fail and may retry.
            self.syncs
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
            out.send_replace(None);
            match r {
                Ok(()) => return,
                Err(e) => {
                    failures += 1;
                    tracing::warn!(coordinator = %self.url, error = %e, failures, "no session with the Labgrid coordinator; opening one again");
                }
            }
            let wait = crate::client::backoff(
                failures,
                Duration::from_millis(200),
                Duration::from_secs(5),
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.cancelled() => return,
            }
        }
    }

    /// One session, until it ends (`Err`) or `stop` (`Ok`).
    async fn session(
        &self,
        out: &watch::Sender<Option<Arc<Snapshot>>>,
        stop: &CancellationToken,
        failures: &mut u32,
    ) -> Result<(), String> {
        use pb::client_in_message::Kind;
        let endpoint = Endpoint::from_shared(self.url.clone())
            .map_err(|e| format!("bad address {}: {e}", self.url))?
            .connect_timeout(self.timeout)
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let channel = tokio::select! {
            c = endpoint.connect() => c.map_err(|e| format!("cannot connect: {e}"))?,
            _ = stop.cancelled() => return Ok(()),
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let opening = [
            Kind::Startup(pb::StartupDone {
                version: concat!("labwire-agent ", env!("CARGO_PKG_VERSION")).into(),
                name: self.identity.clone(),
            }),
            Kind::Subscribe(pb::Subscribe {
                kind: Some(pb::subscribe::Kind::AllPlaces(true)),
            }),
            Kind::Subscribe(pb::Subscribe {
                kind: Some(pb::subscribe::Kind::AllResources(true)),
            }),
            // Sync 0: the answer comes after the whole current state.
            Kind::Sync(pb::Sync { id: 0 }),
        ];
        for m in opening {
            let _ = tx.send(message(m));
        }
        let requests = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let mut client = CoordinatorClient::new(channel.clone());
        let mut stream = tokio::select! {
            s = client.client_stream(requests) => {
                s.map_err(|e| format!("cannot open a session: {}", e.message()))?.into_inner()
            }
            _ = stop.cancelled() => return Ok(()),
        };
        let mut state = State::default();
        let mut ready = false;
        let mut live = Some(Live { channel, tx });
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = stop.cancelled() => return Ok(()),
            };
            let msg = match msg {
                Ok(Some(m)) => m,
                Ok(None) => return Err("the coordinator ended the session".into()),
                Err(e) => return Err(format!("the session broke: {}", e.message())),
            };
            for u in msg.updates {
                state.apply(u);
            }
            if let Some(sync) = msg.sync {
                if sync.id == 0 {
                    if !ready {
                        ready = true;
                        *failures = 0;
                        self.set_live(live.take());
                        tracing::info!(coordinator = %self.url, places = state.places.len(), resources = state.resources.len(), "session with the Labgrid coordinator open");
                    }
                } else {
                    // The reading first, then the waiter: it looks at the reading next.
                    out.send_replace(Some(Arc::new(state.snapshot())));
                    let waiter = self
                        .syncs
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .remove(&sync.id);
                    if let Some(w) = waiter {
                        let _ = w.send(());
                    }
                    continue;
                }
            }
            if ready {
                out.send_replace(Some(Arc::new(state.snapshot())));
            }
        }
    }

    /// Waits until everything the coordinator queued for the session before now is in
    /// the reading.
    pub(crate) async fn sync(&self) -> Result<(), LabgridError> {
        let live = self.live("sync")?;
        let id = self.next_sync.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.syncs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(id, tx);
        let down = |msg: &str| LabgridError::Down {
            what: "sync".into(),
            msg: msg.into(),
        };
        if live
            .tx
            .send(message(pb::client_in_message::Kind::Sync(pb::Sync { id })))
            .is_err()
        {
            return Err(down("the session ended"));
        }
        let r = tokio::time::timeout(self.timeout, rx).await;
        self.syncs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&id);
        match r {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(down("the session ended before the coordinator answered")),
            Err(_) => Err(down(&format!(
                "no answer within {}",
                humantime::format_duration(self.timeout)
            ))),
        }
    }

    /// Acquires `place` as the session's identity.
    pub(crate) async fn acquire(&self, place: &str) -> Result<(), LabgridError> {
        let what = format!("acquire {place}");
        let live = self.live(&what)?;
        let req = pb::AcquirePlaceRequest {
            placename: place.to_string(),
        };
        let mut c = CoordinatorClient::new(live.channel);
        self.call(what, c.acquire_place(req)).await
    }

    /// Releases `place` if `from` holds it.
    pub(crate) async fn release(&self, place: &str, from: &str) -> Result<(), LabgridError> {
        let what = format!("release {place}");
        let live = self.live(&what)?;
        let req = pb::ReleasePlaceRequest {
            placename: place.to_string(),
            fromuser: Some(from.to_string()),
        };
        let mut c = CoordinatorClient::new(live.channel);
        self.call(what, c.release_place(req)).await
    }

    async fn call<T>(
        &self,
        what: String,
        f: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<(), LabgridError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(s)) => Err(LabgridError::Rpc {
                what,
                code: s.code(),
                msg: s.message().to_string(),
            }),
            Err(_) => Err(LabgridError::Rpc {
                what,
                code: tonic::Code::DeadlineExceeded,
                msg: format!(
                    "no answer within {}",
                    humantime::format_duration(self.timeout)
                ),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::map_value::Kind as V;

    fn value(k: V) -> pb::MapValue {
        pb::MapValue { kind: Some(k) }
    }

    #[test]
    fn updates_make_the_reading() {
        use pb::update_response::Kind;
        let mut s = State::default();
        let path = pb::resource::Path {
            exporter_name: Some("exp".into()),
            group_name: "b1".into(),
            resource_name: "serial".into(),
        };
        let serial = pb::Resource {
            path: Some(path.clone()),
            cls: "NetworkSerialPort".into(),
            params: [
                ("host".to_string(), value(V::StringValue("10.0.0.1".into()))),
                ("port".to_string(), value(V::IntValue(7001))),
                ("protocol".to_string(), value(V::StringValue("raw".into()))),
            ]
            .into(),
            avail: true,
        };
        let place = pb::Place {
            name: "b1".into(),
            tags: [("board".to_string(), "bbb".to_string())].into(),
            matches: vec![pb::ResourceMatch {
                exporter: "exp".into(),
                group: "b1".into(),
                cls: "*".into(),
                name: None,
            }],
            acquired: Some("h/u".into()),
            acquired_resources: vec!["exp/b1/NetworkSerialPort/serial".into()],
        };
        s.apply(pb::UpdateResponse {
            kind: Some(Kind::Resource(serial)),
        });
        s.apply(pb::UpdateResponse {
            kind: Some(Kind::Place(place)),
        });
        let snap = s.snapshot();
        let p = snap.place("b1").unwrap();
        assert_eq!(p.acquired.as_deref(), Some("h/u"));
        assert_eq!(p.tags["board"], "bbb");
        assert_eq!(p.matches, ["exp/b1/*"]);
        assert_eq!(p.held_resources, 1);
        let r = snap.serial_of(p).unwrap();
        assert_eq!(r.path, ["exp", "b1", "NetworkSerialPort", "serial"]);
        assert_eq!(
            (r.host.as_deref(), r.port, r.protocol.as_deref()),
            (Some("10.0.0.1"), Some(7001), Some("raw"))
        );
        // The exporter goes: the place has no resources; then the place goes.
        s.apply(pb::UpdateResponse {
            kind: Some(Kind::DelResource(path)),
        });
        let snap = s.snapshot();
        assert!(
            snap.resources_of(snap.place("b1").unwrap())
                .next()
                .is_none()
        );
        s.apply(pb::UpdateResponse {
            kind: Some(Kind::DelPlace("b1".into())),
        });
        assert!(s.snapshot().place("b1").is_none());
    }

    #[test]
    fn a_named_match_and_an_unsigned_port_are_read() {
        let p = place_of(pb::Place {
            name: "p".into(),
            matches: vec![pb::ResourceMatch {
                exporter: "e".into(),
                group: "g".into(),
                cls: "NetworkPowerPort".into(),
                name: Some("pdu".into()),
            }],
            acquired: Some(String::new()),
            ..Default::default()
        });
        assert_eq!(p.matches, ["e/g/NetworkPowerPort/pdu"]);
        assert_eq!(p.acquired, None);
        let r = resource_of(pb::Resource {
            params: [("port".to_string(), value(V::UintValue(70000)))].into(),
            ..Default::default()
        });
        assert_eq!(r.port, None);
    }
}
