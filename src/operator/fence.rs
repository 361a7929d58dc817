//! The write fence: no write leaves this process once it stopped leading.
//!
//! Checking leadership before a write is not enough: between the check and
//! the moment the request's bytes go out there may be a connection to open
//! and a TLS handshake whose answer the network holds back (a replica whose
//! answers arrive late), so a write allowed while leading could reach the
//! API server after a standby took over. The fence wraps the operator's
//! client: every request but a read is polled only while this replica
//! leads; the first time it is polled after leadership ended, it is dropped
//! before anything more is sent (hyper sends nothing for a request whose
//! caller went away) and fails with [`Error::NotLeader`]. The lease itself is
//! renewed through the unfenced client.
//!
//! What remains is the time a request already written spends in the network
//! on its way to the API server: the leader stops writing a third of the
//! lease before any standby may take over (see [`super::leader`]), which is
//! that margin.

use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Method, Request};
use kube::client::Body;

use super::leader::Leadership;

/// A client whose writes stop when `leadership` ends.
pub fn client(inner: kube::Client, leadership: Leadership) -> kube::Client {
    let namespace = inner.default_namespace().to_string();
    let service = tower::service_fn(move |request: Request<Body>| {
        let inner = inner.clone();
        let write = !matches!(*request.method(), Method::GET | Method::HEAD);
        let what = format!("{} {}", request.method(), request.uri().path());
        Fenced {
            inner: Box::pin(async move { inner.send(request).await }),
            leadership: write.then(|| leadership.clone()),
            what,
        }
    });
    kube::Client::new(service, namespace)
}

type Send = Pin<Box<dyn Future<Output = kube::Result<http::Response<Body>>> + std::marker::Send>>;

/// A request that is polled only while this replica leads (reads always).
struct Fenced {
    inner: Send,
    leadership: Option<Leadership>,
    what: String,
}

impl Future for Fenced {
    type Output = Result<http::Response<Body>, tower::BoxError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let Some(leadership) = &self.leadership
            && !leadership.is_leader()
        {
            let what = std::mem::take(&mut self.what);
            return Poll::Ready(Err(Box::new(kube::Error::Service(Box::new(
                super::Error::NotLeader(what),
            )))));
        }
        self.inner.as_mut().poll(cx).map_err(|e| Box::new(e) as _)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use k8s_openapi::api::core::v1::Node;
    use kube::api::{Api, Patch, PatchParams};
    use tokio::sync::Notify;
    use tokio::time::Instant;

    use super::*;

    /// An API server behind a link that holds its answers: every request
    /// waits for `handshake` before it is "sent" (recorded), the way a new
    /// connection waits for a TLS handshake's answer.
    fn held_link() -> (kube::Client, Arc<Notify>, Arc<Mutex<Vec<String>>>) {
        let handshake = Arc::new(Notify::new());
        let sent = Arc::new(Mutex::new(Vec::new()));
        let (h, s) = (handshake.clone(), sent.clone());
        let service = tower::service_fn(move |request: Request<Body>| {
            let (h, s) = (h.clone(), s.clone());
            async move {
                h.notified().await;
                s.lock()
                    .unwrap()
                    .push(format!("{} {}", request.method(), request.uri()));
                let node = r#"{"apiVersion":"v1","kind":"Node","metadata":{"name":"n"}}"#;
                Ok::<_, std::convert::Infallible>(http::Response::new(Body::from(
                    node.as_bytes().to_vec(),
                )))
            }
        });
        (kube::Client::new(service, "default"), handshake, sent)
    }

    fn patch(client: &kube::Client) -> impl Future<Output = kube::Result<Node>> + 'static {
        let nodes: Api<Node> = Api::all(client.clone());
        async move {
            let patch = serde_json::json!({"metadata": {"labels": {"a": "b"}}});
            nodes
                .patch("n", &PatchParams::default(), &Patch::Merge(&patch))
                .await
        }
    }

    #[tokio::test]
    async fn a_write_held_past_the_end_of_leadership_is_never_sent() {
        let (inner, handshake, sent) = held_link();
        let (leadership, lead) = Leadership::manual();
        lead.send_replace(Some(Instant::now() + Duration::from_secs(60)));
        let client = client(inner, leadership);
        // Allowed while leading; its connection waits on the held link.
        let write = tokio::spawn(patch(&client));
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Leadership ends (a standby may take over); then the link lets go.
        lead.send_replace(None);
        handshake.notify_waiters();
        let result = write.await.expect("the write's task");
        assert!(
            sent.lock().unwrap().is_empty(),
            "sent after leading: {sent:?}"
        );
        let err = result.expect_err("a write after leadership must fail");
        assert!(err.to_string().contains("not the leader"), "{err}");
    }

    #[tokio::test]
    async fn reads_pass_and_writes_pass_while_leading() {
        let (inner, handshake, sent) = held_link();
        let (leadership, lead) = Leadership::manual();
        let client = client(inner, leadership);
        // Not leading: a read still goes out.
        let nodes: Api<Node> = Api::all(client.clone());
        let read = tokio::spawn(async move { nodes.get("n").await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        handshake.notify_waiters();
        read.await.unwrap().expect("a read");
        // Leading: a write goes out.
        lead.send_replace(Some(Instant::now() + Duration::from_secs(60)));
        let write = tokio::spawn(patch(&client));
        tokio::time::sleep(Duration::from_millis(50)).await;
        handshake.notify_waiters();
        write.await.unwrap().expect("a write while leading");
        assert_eq!(sent.lock().unwrap().len(), 2, "{sent:?}");
    }
}
