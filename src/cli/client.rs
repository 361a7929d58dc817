//! The one way every subcommand makes its Kubernetes client: which cluster
//! (a kubeconfig file and context, else kubectl's rules, else the in-cluster
//! service account), how its requests name themselves (the user agent, which
//! the API server's audit log shows), and optionally a read timeout and a
//! counter of every request for the operator's metrics.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use gpufleet::operator::metrics::Metrics;
use kube::config::{KubeConfigOptions, Kubeconfig};

/// The operator's user agent; `gpufleet bench` counts requests by it.
pub const OPERATOR_AGENT: &str = concat!("gpufleet/", env!("CARGO_PKG_VERSION"));
/// The plugin commands' user agent, so the audit log tells a person's
/// commands from the operator's writes.
pub const PLUGIN_AGENT: &str = concat!("kubectl-gpufleet/", env!("CARGO_PKG_VERSION"));

/// A kube client under construction; [`Builder::build`] makes it.
pub struct Builder<'a> {
    kubeconfig: Option<&'a Path>,
    context: Option<&'a str>,
    user_agent: String,
    read_timeout: Option<Duration>,
    counter: Option<Arc<Metrics>>,
}

/// A client whose requests carry `user_agent`.
pub fn builder<'a>(user_agent: impl Into<String>) -> Builder<'a> {
    Builder {
        kubeconfig: None,
        context: None,
        user_agent: user_agent.into(),
        read_timeout: None,
        counter: None,
    }
}

impl<'a> Builder<'a> {
    /// Reads this kubeconfig file; without one, kubectl's rules pick the
    /// cluster (`$KUBECONFIG`, then `~/.kube/config`), then the in-cluster
    /// service account.
    pub fn kubeconfig(mut self, path: Option<&'a Path>) -> Self {
        self.kubeconfig = path;
        self
    }

    /// The kubeconfig context (default: its current context).
    pub fn context(mut self, context: Option<&'a str>) -> Self {
        self.context = context;
        self
    }

    /// Gives up a request whose response sends nothing for this long
    /// (default: wait as long as it takes). The timeout counts from when the
    /// request was sent, not from when its pooled connection went idle.
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = Some(timeout);
        self
    }

    /// Counts every request, by method and resource, in `metrics`.
    pub fn count_requests(mut self, metrics: Arc<Metrics>) -> Self {
        self.counter = Some(metrics);
        self
    }

    pub async fn build(self) -> anyhow::Result<kube::Client> {
        let options = KubeConfigOptions {
            context: self.context.map(String::from),
            ..Default::default()
        };
        let mut config = match self.kubeconfig {
            Some(path) => {
                let file = Kubeconfig::read_from(path)
                    .with_context(|| format!("reading kubeconfig {}", path.display()))?;
                kube::Config::from_custom_kubeconfig(file, &options).await?
            }
            // What kube::Config::infer does, with the context honoured.
            None => {
                let mut config = match kube::Config::from_kubeconfig(&options).await {
                    Ok(config) => config,
                    Err(kubeconfig_err) => kube::Config::incluster().map_err(|_| {
                        anyhow!(
                            "no cluster to talk to: {kubeconfig_err} \
                             (set KUBECONFIG or pass --kubeconfig)"
                        )
                    })?,
                };
                config.apply_debug_overrides();
                config
            }
        };
        let agent = http::HeaderValue::from_str(&self.user_agent)
            .unwrap_or(http::HeaderValue::from_static("gpufleet"));
        config.headers.push((http::header::USER_AGENT, agent));
        if let Some(timeout) = self.read_timeout {
            config.read_timeout = Some(timeout);
            config.reset_reader_on_write = true;
        }
        let builder = kube::client::ClientBuilder::try_from(config)?;
        Ok(match self.counter {
            Some(metrics) => {
                let counter = tower::util::MapRequestLayer::new(
                    move |req: http::Request<kube::client::Body>| {
                        metrics.observe_request(req.method(), req.uri());
                        req
                    },
                );
                builder.with_layer(&counter).build()
            }
            None => builder.build(),
        })
    }
}

/// Every object of a kind, read leniently: those that decode, and for each
/// that does not (stored before a schema change, or written around
/// admission) its name and why, so one broken object is a broken row in a
/// listing rather than an error that hides every other.
pub async fn list_lenient<K>(
    client: &kube::Client,
) -> anyhow::Result<(Vec<K>, Vec<(String, String)>)>
where
    K: kube::Resource<Scope = kube::core::ClusterResourceScope>
        + serde::de::DeserializeOwned
        + Clone
        + std::fmt::Debug,
    K::DynamicType: Default,
{
    use kube::core::DeserializeGuard;
    let items = kube::Api::<DeserializeGuard<K>>::all(client.clone())
        .list(&Default::default())
        .await?
        .items;
    let (mut good, mut broken) = (Vec::new(), Vec::new());
    for item in items {
        match item.0 {
            Ok(object) => good.push(object),
            Err(invalid) => broken.push((invalid.metadata.name.unwrap_or_default(), invalid.error)),
        }
    }
    Ok((good, broken))
}
