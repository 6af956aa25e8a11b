//! Log downloads: a job's log, byte for byte, streamed from the store.

use super::ApiError;
use super::nodes::node_id;
use super::routes::authorize;
use crate::error::Error;
use crate::model::NodeId;
use crate::shared::SharedRef;
use crate::store::labs::Scope;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, header};
use axum::response::{IntoResponse, Response};

pub(super) async fn log_latest(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    Path(job): Path<String>,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Scope::Read).await?;
    let job = node_id("job", &job)?;
    let attempt = shared
        .store
        .read(move |c| crate::store::jobs::log_attempt(c, job))
        .await?
        .ok_or_else(|| ApiError(Error::NotFound(format!("job {job} has no log yet"))))?;
    send_log(shared, job, attempt).await
}

pub(super) async fn log_attempt(
    State(shared): State<SharedRef>,
    headers: HeaderMap,
    Path((job, attempt)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    authorize(&shared, &headers, Scope::Read).await?;
    let job = node_id("job", &job)?;
    let attempt: i32 = match attempt.parse() {
        Ok(a) if a >= 0 => a,
        _ => {
            return Err(ApiError::invalid(format!(
                "attempt: `{attempt}` is not an attempt number"
            )));
        }
    };
    send_log(shared, job, attempt).await
}

/// `GET /logs/{job}[/{attempt}]`: a job's log, byte for byte, streamed from the store.
pub(super) async fn send_log(
    shared: SharedRef,
    job: NodeId,
    attempt: i32,
) -> Result<Response, ApiError> {
    let store = shared.store.clone();
    let first = store
        .read(move |c| crate::store::jobs::read_log(c, job, attempt, 0, 1 << 20))
        .await?;
    if first.is_empty() {
        return Err(ApiError(Error::NotFound(format!(
            "job {job} has no log for attempt {attempt}"
        ))));
    }
    let stream = async_stream::try_stream! {
        let mut batch = first;
        while let Some(last) = batch.last().map(|(off, _)| *off) {
            for (_, data) in batch {
                yield bytes::Bytes::from(data);
            }
            let from = last + 1;
            batch = store
                .read(move |c| crate::store::jobs::read_log(c, job, attempt, from, 1 << 20))
                .await
                .map_err(std::io::Error::other)?;
        }
    };
    Ok((
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        Body::from_stream::<_>(Box::pin(stream)
            as std::pin::Pin<
                Box<dyn futures::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send>,
            >),
    )
        .into_response())
}
