//! EventService: catch-up from a cursor, then live delivery, with no gap and no duplicate.
//! The stream reads the durable log in sequence order and, when it has caught up, waits for
//! the store to announce a newer sequence number; it never relies on in-memory copies of
//! events, so a slow subscriber cannot miss any.

use crate::model::NodeKind;
use crate::shared::SharedRef;
use crate::store::StoredEvent;
use crate::store::labs::Scope;
use labwire_proto::convert;
use labwire_proto::v1::{self, event_service_server::EventService};
use std::pin::Pin;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

/// The event service.
pub(crate) struct EventApi {
    shared: SharedRef,
}

impl EventApi {
    /// The service over shared state.
    pub(crate) fn new(shared: SharedRef) -> Self {
        EventApi { shared }
    }
}

/// A stored event as its protobuf message.
pub(crate) fn event_to_proto(e: &StoredEvent, source: &str) -> v1::Event {
    v1::Event {
        seq: e.seq,
        r#type: e.event_type().to_string(),
        source: source.to_string(),
        time: Some(convert::timestamp(e.time)),
        node: Some(e.node.to_proto()),
        op: e.op.clone(),
        previous_state: e.previous_state.map_or(0, |s| s.to_proto() as i32),
        previous_result: convert::result_to_proto(e.previous_result) as i32,
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::Event, Status>> + Send>>;

#[tonic::async_trait]
impl EventService for EventApi {
    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        req: Request<v1::SubscribeRequest>,
    ) -> Result<Response<EventStream>, Status> {
        self.shared.auth.token(&req, Scope::Read).await?;
        let r = req.into_inner();
        if r.after_seq < 0 {
            return Err(Status::invalid_argument("after_seq must not be negative"));
        }
        let kind = if r.kind == 0 {
            None
        } else {
            Some(NodeKind::from_proto(r.kind).ok_or_else(|| {
                Status::invalid_argument(format!("kind: {} is not a known value", r.kind))
            })?)
        };
        let store = self.shared.store.clone();
        // Refuse a pruned cursor now, as the call's status, rather than inside the stream.
        let after = r.after_seq;
        store
            .read(move |c| crate::store::events::events_after(c, after, 1, kind, false))
            .await?;
        let source = self.shared.config.public_url.clone();
        let rx = crate::store::events::follow(
            store,
            after,
            kind,
            false,
            r.catch_up_only,
            self.shared.shutdown.clone(),
        );
        let stream = ReceiverStream::new(rx).map(move |e| match e {
            Ok(e) => Ok(event_to_proto(&e, &source)),
            Err(e) => Err(Status::from(e)),
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
