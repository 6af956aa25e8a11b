//! NodeService: create, change, read and query nodes; submit jobs; read job logs.

use super::node_id;
use crate::model::{NodeId, NodeKind, NodeState};
use crate::shared::SharedRef;
use crate::store::labs::Scope;
use crate::store::{NewJob, NewNode, NodeFilter, NodeUpdate};
use labwire_proto::convert;
use labwire_proto::v1::{self, node_service_server::NodeService};
use std::pin::Pin;
use tokio_stream::Stream;
use tonic::{Request, Response, Status};

/// The node service.
pub(crate) struct NodeApi {
    shared: SharedRef,
}

impl NodeApi {
    /// The service over shared state.
    pub(crate) fn new(shared: SharedRef) -> Self {
        NodeApi { shared }
    }
}

fn time(
    field: &str,
    t: Option<&prost_types::Timestamp>,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, Status> {
    t.map(|t| {
        convert::from_timestamp(t)
            .ok_or_else(|| Status::invalid_argument(format!("{field} is out of range")))
    })
    .transpose()
}

fn enum_field<T>(field: &str, v: i32, f: impl Fn(i32) -> Option<T>) -> Result<Option<T>, Status> {
    if v == 0 {
        return Ok(None);
    }
    f(v).map(Some)
        .ok_or_else(|| Status::invalid_argument(format!("{field}: {v} is not a known value")))
}

type LogStream = Pin<Box<dyn Stream<Item = Result<v1::LogChunk, Status>> + Send>>;

#[tonic::async_trait]
impl NodeService for NodeApi {
    async fn create_node(
        &self,
        req: Request<v1::CreateNodeRequest>,
    ) -> Result<Response<v1::CreateNodeResponse>, Status> {
        let token = self.shared.auth.token(&req, Scope::Submit).await?;
        let n = req
            .into_inner()
            .node
            .ok_or_else(|| Status::invalid_argument("node is required"))?;
        let kind = enum_field("node.kind", n.kind, NodeKind::from_proto)?
            .ok_or_else(|| Status::invalid_argument("node.kind is required"))?;
        if kind == NodeKind::Job {
            return Err(Status::invalid_argument(
                "job nodes are created with SubmitJob, which also queues them",
            ));
        }
        let mut new = NewNode::new(kind, n.name);
        new.parent = (n.parent != 0)
            .then(|| node_id("node.parent", n.parent))
            .transpose()?;
        new.group = (!n.group.is_empty()).then_some(n.group);
        new.state =
            enum_field("node.state", n.state, NodeState::from_proto)?.unwrap_or(NodeState::Running);
        new.result = convert::result_from_proto(n.result);
        new.artifacts = n.artifacts.into_iter().collect();
        new.data = n
            .data
            .as_ref()
            .map(convert::struct_to_map)
            .unwrap_or_default();
        new.timeout = time("node.timeout", n.timeout.as_ref())?;
        new.holdoff = time("node.holdoff", n.holdoff.as_ref())?;
        new.owner = token.name;
        new.submitter = n.submitter;
        let node = self.shared.store.write(move |w| w.create_node(new)).await?;
        Ok(Response::new(v1::CreateNodeResponse {
            node: Some(node.to_proto()),
        }))
    }

    async fn update_node(
        &self,
        req: Request<v1::UpdateNodeRequest>,
    ) -> Result<Response<v1::UpdateNodeResponse>, Status> {
        self.shared.auth.token(&req, Scope::Submit).await?;
        let r = req.into_inner();
        let id = node_id("id", r.id)?;
        let u = NodeUpdate {
            state: enum_field("state", r.state, NodeState::from_proto)?,
            result: convert::result_from_proto(r.result),
            data: r
                .data
                .as_ref()
                .map(convert::struct_to_map)
                .unwrap_or_default(),
            artifacts: r.artifacts.into_iter().collect(),
            retry_counter: None,
            holdoff: None,
        };
        let node = self
            .shared
            .store
            .write(move |w| w.update_node_for_client(id, u))
            .await?;
        Ok(Response::new(v1::UpdateNodeResponse {
            node: Some(node.to_proto()),
        }))
    }

    async fn get_node(
        &self,
        req: Request<v1::GetNodeRequest>,
    ) -> Result<Response<v1::Node>, Status> {
        self.shared.auth.token(&req, Scope::Read).await?;
        let id = node_id("id", req.into_inner().id)?;
        let node = self
            .shared
            .store
            .read(move |c| crate::store::nodes::get_node(c, id))
            .await?;
        Ok(Response::new(node.to_proto()))
    }

    async fn query_nodes(
        &self,
        req: Request<v1::QueryNodesRequest>,
    ) -> Result<Response<v1::QueryNodesResponse>, Status> {
        self.shared.auth.token(&req, Scope::Read).await?;
        let r = req.into_inner();
        let limit = if r.limit == 0 {
            100
        } else {
            r.limit.min(1000) as usize
        };
        let f = NodeFilter {
            kind: enum_field("kind", r.kind, NodeKind::from_proto)?,
            state: enum_field("state", r.state, NodeState::from_proto)?,
            result: convert::result_from_proto(r.result),
            name: (!r.name.is_empty()).then_some(r.name),
            parent: (r.parent != 0)
                .then(|| node_id("parent", r.parent))
                .transpose()?,
            path_prefix: r.path_prefix,
            group: (!r.group.is_empty()).then_some(r.group),
            treeid: (!r.treeid.is_empty()).then_some(r.treeid),
            created_after: time("created_after", r.created_after.as_ref())?,
            created_before: time("created_before", r.created_before.as_ref())?,
            updated_after: time("updated_after", r.updated_after.as_ref())?,
            updated_before: time("updated_before", r.updated_before.as_ref())?,
            cursor: (r.cursor > 0).then_some(NodeId(r.cursor)),
            limit,
        };
        let nodes = self
            .shared
            .store
            .read(move |c| crate::store::nodes::query_nodes(c, &f))
            .await?;
        let next_cursor = if nodes.len() == limit {
            nodes.last().map_or(0, |n| n.id.0)
        } else {
            0
        };
        Ok(Response::new(v1::QueryNodesResponse {
            nodes: nodes.iter().map(|n| n.to_proto()).collect(),
            next_cursor,
        }))
    }

    async fn submit_job(
        &self,
        req: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::SubmitJobResponse>, Status> {
        let token = self.shared.auth.token(&req, Scope::Submit).await?;
        let r = req.into_inner();
        let spec = r
            .spec
            .ok_or_else(|| Status::invalid_argument("spec is required"))?;
        let job = NewJob {
            spec,
            parent: (r.parent != 0)
                .then(|| node_id("parent", r.parent))
                .transpose()?,
            submitter: if r.submitter.is_empty() {
                token.name.clone()
            } else {
                r.submitter
            },
            owner: token.name,
            ..Default::default()
        };
        let (node, _) = self.shared.queue.submit(job).await?;
        tracing::info!(job = %node.id, name = %node.name, "job submitted");
        Ok(Response::new(v1::SubmitJobResponse {
            node: Some(node.to_proto()),
        }))
    }

    type GetLogStream = LogStream;

    async fn get_log(
        &self,
        req: Request<v1::GetLogRequest>,
    ) -> Result<Response<LogStream>, Status> {
        self.shared.auth.token(&req, Scope::Read).await?;
        let r = req.into_inner();
        let job = node_id("job", r.job)?;
        let store = self.shared.store.clone();
        let attempt = if r.attempt >= 0 {
            r.attempt
        } else {
            store
                .read(move |c| crate::store::jobs::log_attempt(c, job))
                .await?
                .ok_or_else(|| Status::not_found(format!("job {job} has no log yet")))?
        };
        let stream = async_stream::try_stream! {
            let mut from = 0u64;
            loop {
                let chunks = store
                    .read(move |c| crate::store::jobs::read_log(c, job, attempt, from, 1 << 20))
                    .await?;
                if chunks.is_empty() {
                    break;
                }
                for (offset, data) in chunks {
                    from = offset + 1;
                    yield v1::LogChunk { offset, data };
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }
}
