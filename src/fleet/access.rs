//! Reaching member clusters: from a ClusterProfile through the consumer's
//! access providers (KEP-5339), or from a kubeconfig context.
//!
//! The access provider file is the consumer side of KEP-5339, JSON or YAML:
//!
//! ```yaml
//! providers:
//!   - name: open-cluster-management     # as in status.accessProviders[].name
//!     execConfig:                        # a kubeconfig `exec` entry
//!       apiVersion: client.authentication.k8s.io/v1
//!       command: /usr/local/bin/cp-creds
//!       args: ["--managed-serviceaccount=gpufleet"]
//!       provideClusterInfo: true
//! ```
//!
//! A profile is reached with the first of its access providers the file
//! names, at the address the profile gives; the plugin gets the profile's
//! cluster (and its `client.authentication.k8s.io/exec` extension) in
//! `KUBERNETES_EXEC_INFO` when `provideClusterInfo` is set.

use std::path::Path;
use std::time::Duration;

use kube::config::{
    AuthInfo, Cluster, Context, ExecConfig, KubeConfigOptions, Kubeconfig, NamedAuthInfo,
    NamedCluster, NamedContext, NamedExtension,
};
use serde::Deserialize;

use crate::api::ClusterProfile;

/// The consumer's access providers, by name.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Providers {
    #[serde(default)]
    pub providers: Vec<Provider>,
}

/// One access provider: a name a ClusterProfile may list, and the exec
/// credential plugin that gives credentials for it.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Provider {
    pub name: String,
    pub exec_config: ExecConfig,
}

impl Providers {
    /// Reads an access provider file (JSON or YAML).
    pub fn read(path: &Path) -> anyhow::Result<Providers> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("reading access providers {}: {e}", path.display()))?;
        let providers: Providers = serde_norway::from_str(&text).map_err(|e| {
            anyhow::anyhow!(
                "{} is not an access provider file ({e}); it needs \
                 `providers: [{{name, execConfig}}]`",
                path.display()
            )
        })?;
        for (i, p) in providers.providers.iter().enumerate() {
            if p.exec_config.command.as_deref().is_none_or(str::is_empty) {
                anyhow::bail!(
                    "{}: providers[{i}] ({}) has no execConfig.command",
                    path.display(),
                    p.name
                );
            }
        }
        Ok(providers)
    }

    fn names(&self) -> Vec<&str> {
        self.providers.iter().map(|p| p.name.as_str()).collect()
    }
}

/// How a member is reached.
#[derive(Clone)]
pub enum Access {
    /// A kubeconfig that names the cluster, its credentials and a context.
    Kubeconfig(Box<Kubeconfig>, KubeConfigOptions),
    /// Unusable: why, in words that say what to fix.
    Unusable(String),
}

/// How to reach the cluster of `profile`.
pub fn profile_access(profile: &ClusterProfile, providers: &Providers) -> Access {
    let offered = profile.providers();
    if offered.is_empty() {
        return Access::Unusable(
            "its ClusterProfile lists no access provider (status.accessProviders)".into(),
        );
    }
    let Some((provider, cluster)) = providers
        .providers
        .iter()
        .find_map(|p| offered.get(p.name.as_str()).map(|c| (p, *c)))
    else {
        return Access::Unusable(format!(
            "its ClusterProfile offers access providers {} and gpufleet knows {}: \
             add one to the access provider file (--access-providers)",
            offered.keys().copied().collect::<Vec<_>>().join(", "),
            if providers.providers.is_empty() {
                "none".to_string()
            } else {
                providers.names().join(", ")
            }
        ));
    };
    let Some(server) = cluster.server.clone().filter(|s| !s.is_empty()) else {
        return Access::Unusable(format!(
            "its access provider {} gives no server address",
            provider.name
        ));
    };
    let name = profile.metadata.name.clone().unwrap_or_default();
    let kubeconfig = Kubeconfig {
        clusters: vec![NamedCluster {
            name: name.clone(),
            cluster: Some(Cluster {
                server: Some(server),
                certificate_authority_data: cluster.certificate_authority_data.clone(),
                insecure_skip_tls_verify: cluster.insecure_skip_tls_verify,
                tls_server_name: cluster.tls_server_name.clone(),
                proxy_url: cluster.proxy_url.clone(),
                extensions: Some(
                    cluster
                        .extensions
                        .iter()
                        .map(|e| NamedExtension {
                            name: e.name.clone(),
                            extension: e.extension.clone(),
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            other: Default::default(),
        }],
        auth_infos: vec![NamedAuthInfo {
            name: provider.name.clone(),
            auth_info: Some(AuthInfo {
                exec: Some(provider.exec_config.clone()),
                ..Default::default()
            }),
            other: Default::default(),
        }],
        contexts: vec![NamedContext {
            name: name.clone(),
            context: Some(Context {
                cluster: name.clone(),
                user: Some(provider.name.clone()),
                ..Default::default()
            }),
            other: Default::default(),
        }],
        current_context: Some(name),
        ..Default::default()
    };
    Access::Kubeconfig(Box::new(kubeconfig), KubeConfigOptions::default())
}

/// A client for the member, every request of which gives up after
/// `deadline` without an answer. The exec plugin, if any, runs here (on a
/// blocking thread, within the deadline); its failure is the member's lack
/// of credentials.
pub async fn client(
    access: &Access,
    user_agent: &str,
    deadline: Duration,
) -> Result<kube::Client, ClientError> {
    let (kubeconfig, options) = match access {
        Access::Kubeconfig(k, o) => ((**k).clone(), o.clone()),
        Access::Unusable(why) => return Err(ClientError::Credentials(why.clone())),
    };
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| ClientError::Credentials(format!("its kubeconfig does not load: {e}")))?;
    // The caller bounds each look by `deadline` as a whole; the client's
    // own timeouts only catch what outlives that (a connection left open).
    config.connect_timeout = Some(deadline * 2);
    config.read_timeout = Some(deadline * 2);
    config.write_timeout = Some(deadline * 2);
    if let Ok(agent) = http::HeaderValue::from_str(user_agent) {
        config.headers.push((http::header::USER_AGENT, agent));
    }
    // The plugin runs on a blocking thread that no timeout can stop: one
    // that hangs keeps its thread (and process) until it returns. Only one
    // run at a time per member, so a hung plugin costs one thread, not one
    // a look.
    let key = format!(
        "{}|{}",
        config.cluster_url,
        options.context.unwrap_or_default()
    );
    if !PLUGINS_RUNNING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key.clone())
    {
        return Err(ClientError::Credentials(
            "its credential plugin has not returned from an earlier run".into(),
        ));
    }
    let build = tokio::task::spawn_blocking(move || {
        let client = kube::Client::try_from(config);
        PLUGINS_RUNNING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key);
        client
    });
    match tokio::time::timeout(deadline, build).await {
        Err(_) => Err(ClientError::Credentials(format!(
            "its credential plugin did not answer within {:.1} s",
            deadline.as_secs_f64()
        ))),
        Ok(Err(e)) => Err(ClientError::Credentials(format!("{e}"))),
        Ok(Ok(Err(e))) => Err(ClientError::Credentials(format!(
            "its credential plugin failed: {}",
            first_line(&e.to_string())
        ))),
        Ok(Ok(Ok(client))) => Ok(client),
    }
}

/// Members whose credential plugin runs now.
static PLUGINS_RUNNING: std::sync::Mutex<std::collections::BTreeSet<String>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Why a member has no client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientError {
    Credentials(String),
}

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ClientError::Credentials(why) => f.write_str(why),
        }
    }
}

/// The first line of an error, at most 300 characters: an exec plugin's
/// failure carries its whole output.
pub fn first_line(text: &str) -> String {
    let line = text.lines().next().unwrap_or_default();
    line.chars().take(300).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{AccessProvider, ClusterProfileStatus, ProfileCluster};

    fn profile(providers: &[(&str, Option<&str>)]) -> ClusterProfile {
        let mut p = ClusterProfile::new(
            "member-a",
            crate::api::ClusterProfileSpec {
                display_name: None,
                cluster_manager: crate::api::ClusterManager {
                    name: "test".into(),
                },
            },
        );
        p.status = Some(ClusterProfileStatus {
            access_providers: providers
                .iter()
                .map(|(name, server)| AccessProvider {
                    name: name.to_string(),
                    cluster: ProfileCluster {
                        server: server.map(String::from),
                        ..Default::default()
                    },
                })
                .collect(),
            ..Default::default()
        });
        p
    }

    fn providers(names: &[&str]) -> Providers {
        Providers {
            providers: names
                .iter()
                .map(|n| Provider {
                    name: n.to_string(),
                    exec_config: ExecConfig {
                        command: Some("/bin/true".into()),
                        ..Default::default()
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn a_profile_is_reached_through_the_first_provider_both_sides_know() {
        let p = profile(&[("ocm", Some("https://a:6443")), ("gke", Some("https://b"))]);
        let Access::Kubeconfig(k, _) = profile_access(&p, &providers(&["gke", "ocm"])) else {
            panic!("usable")
        };
        let cluster = k.clusters[0].cluster.as_ref().unwrap();
        assert_eq!(cluster.server.as_deref(), Some("https://b"));
        assert_eq!(k.auth_infos[0].name, "gke");
    }

    #[test]
    fn unusable_credentials_say_what_to_fix() {
        let none = profile(&[]);
        let Access::Unusable(why) = profile_access(&none, &providers(&["ocm"])) else {
            panic!()
        };
        assert!(why.contains("lists no access provider"), "{why}");
        let other = profile(&[("gke", Some("https://b"))]);
        let Access::Unusable(why) = profile_access(&other, &providers(&["ocm"])) else {
            panic!()
        };
        assert!(
            why.contains("offers access providers gke and gpufleet knows ocm"),
            "{why}"
        );
        let no_server = profile(&[("ocm", None)]);
        let Access::Unusable(why) = profile_access(&no_server, &providers(&["ocm"])) else {
            panic!()
        };
        assert!(why.contains("no server address"), "{why}");
    }

    #[test]
    fn a_provider_file_needs_a_command() {
        let dir = std::env::temp_dir().join(format!("gpufleet-providers-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("p.yaml");
        std::fs::write(
            &path,
            "providers: [{name: ocm, execConfig: {apiVersion: v1}}]",
        )
        .unwrap();
        let err = Providers::read(&path).unwrap_err().to_string();
        assert!(
            err.contains("providers[0] (ocm) has no execConfig.command"),
            "{err}"
        );
        std::fs::write(&path, "providers: [{name: ocm, execConfig: {command: x}}]").unwrap();
        assert_eq!(Providers::read(&path).unwrap().providers.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
