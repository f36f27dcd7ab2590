//! Requests to gRPC paths nobody serves.
//!
//! tonic answers a path of no registered service (`/v3lockpb.Lock/Lock`), and a method a
//! registered service does not have (`/etcdserverpb.KV/Foo`), with `Unimplemented` and no
//! message. [`NameUnservedLayer`] wraps the router and gives such answers a message naming
//! the path: `raft-kv does not serve v3lockpb.Lock/Lock`. Answers that carry a message
//! already (the methods raft-kv declares but does not serve name themselves) pass unchanged.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http::{HeaderMap, Request, Response};
use tonic::codegen::Service;
use tonic::Status;

use super::unserved;

/// gRPC's status code `Unimplemented`, as the `grpc-status` header carries it.
const UNIMPLEMENTED: &[u8] = b"12";

/// A [`tower_layer::Layer`] putting [`NameUnserved`] in front of a service.
#[derive(Clone, Copy, Debug, Default)]
pub struct NameUnservedLayer;

impl<S> tower_layer::Layer<S> for NameUnservedLayer {
    type Service = NameUnserved<S>;

    fn layer(&self, inner: S) -> NameUnserved<S> {
        NameUnserved { inner }
    }
}

/// Passes requests to the inner service and names the path in an `Unimplemented` answer
/// without a message.
#[derive(Clone, Debug)]
pub struct NameUnserved<S> {
    inner: S,
}

/// Whether response headers say `Unimplemented` without saying why (a trailers-only
/// answer: gRPC's status is in the headers).
fn unexplained_unimplemented(headers: &HeaderMap) -> bool {
    headers
        .get(Status::GRPC_STATUS)
        .is_some_and(|code| code.as_bytes() == UNIMPLEMENTED)
        && headers
            .get(Status::GRPC_MESSAGE)
            .is_none_or(|m| m.is_empty())
}

/// Gives an unexplained `Unimplemented` answer to a request for `path` its message.
fn name_path(headers: &mut HeaderMap, path: &str) {
    if !unexplained_unimplemented(headers) {
        return;
    }
    let status = unserved(path.trim_start_matches('/'));
    if status.add_header(headers).is_err() {
        tracing::debug!(path, "cannot name an unserved path in the answer");
    }
}

impl<S, B, ResBody> Service<Request<B>> for NameUnserved<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Response<ResBody>, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let uri = request.uri().clone();
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            name_path(response.headers_mut(), uri.path());
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trailers_only(status: Status) -> HeaderMap {
        let mut headers = HeaderMap::new();
        status.add_header(&mut headers).expect("valid headers");
        headers
    }

    #[test]
    fn an_empty_unimplemented_gets_the_path() {
        let mut headers = trailers_only(Status::unimplemented(""));
        name_path(&mut headers, "/v3lockpb.Lock/Lock");
        let status = Status::from_header_map(&headers).expect("a status");
        assert_eq!(status.code(), tonic::Code::Unimplemented);
        assert_eq!(
            status.message(),
            "raft-kv does not serve v3lockpb.Lock/Lock"
        );
    }

    #[test]
    fn other_answers_pass_unchanged() {
        for status in [
            Status::unimplemented("raft-kv does not serve KV.Txn"),
            Status::invalid_argument(""),
            Status::ok(""),
        ] {
            let before = trailers_only(status);
            let mut headers = before.clone();
            name_path(&mut headers, "/etcdserverpb.KV/Txn");
            assert_eq!(headers, before);
        }
        // No gRPC status at all (a response whose status comes in trailers).
        let mut headers = HeaderMap::new();
        name_path(&mut headers, "/etcdserverpb.KV/Range");
        assert!(headers.is_empty());
    }
}
