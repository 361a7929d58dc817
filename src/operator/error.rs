//! The operator's errors. Each names the object it concerns, and has a
//! category from a small fixed set for logs and metrics.

use thiserror::Error;

#[derive(Debug, Error)]
pub enum Error {
    /// A request to the API server failed.
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
    /// Adding or removing the finalizer failed.
    #[error("finalizer of {what}: {source}")]
    Finalizer {
        what: String,
        #[source]
        source: Box<kube::runtime::finalizer::Error<Error>>,
    },
    /// The caches never synced.
    #[error("watch caches are gone: {0}")]
    Cache(String),
    /// This replica lost the lease mid-reconcile: it writes nothing more.
    #[error("not the leader: {0} left undone")]
    NotLeader(String),
    /// A bug panicked inside one reconcile: that object is stalled with
    /// reason InternalError, and the rest of the fleet carries on.
    #[error("internal error reconciling {what}: {message}")]
    Panic { what: String, message: String },
}

impl Error {
    /// A static label for metrics and events.
    pub fn category(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } => match source {
                kube::Error::Api(status) if status.code == 409 => "conflict",
                kube::Error::Api(status) if status.code == 404 => "not_found",
                kube::Error::Api(status) if status.code == 422 || status.code == 400 => "invalid",
                kube::Error::Api(status) if status.code == 403 => "forbidden",
                kube::Error::Api(_) => "api",
                _ => "transport",
            },
            Error::Finalizer { .. } => "finalizer",
            Error::Cache(_) => "cache",
            Error::NotLeader(_) => "not_leader",
            Error::Panic { .. } => "internal",
        }
    }

    /// Wraps a client error with the object it concerns.
    pub fn kube(what: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let what = what.into();
        move |source| Error::Kube { what, source }
    }
}

/// Is this API error a 404?
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 404)
}

/// Is this API error a 409?
pub fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(s) if s.code == 409)
}
