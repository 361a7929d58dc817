//! The one renderer of the CustomResourceDefinitions: `gpufleet crds`, the
//! committed `crds/` folder and (later) the Helm chart all come from here.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::api::{ClusterProfile, FleetRollout, GpuPool, RolloutBatch};

/// One rendered CRD: the file it is committed as and its YAML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RenderedCrd {
    /// File name under `crds/`, such as `gpupools.gpufleet.io.yaml`.
    pub file_name: String,
    /// The manifest, a single YAML document.
    pub yaml: String,
}

/// Every CRD gpufleet owns, in a fixed order.
pub fn definitions() -> Vec<CustomResourceDefinition> {
    vec![
        tidy(GpuPool::crd()),
        tidy(RolloutBatch::crd()),
        tidy(FleetRollout::crd()),
    ]
}

/// The CRDs of other projects that the test bed stands in for: the
/// SIG-Multicluster ClusterProfile, written from its public API (the part
/// gpufleet reads). Committed under `tests/integration/crds/`.
pub fn test_bed_definitions() -> Vec<CustomResourceDefinition> {
    vec![tidy(ClusterProfile::crd())]
}

/// Drops the integer formats schemars derives from Rust types (`uint32`),
/// which the API server does not know and warns about on every request that
/// writes the object. Ranges in the schema already bound those fields.
fn tidy(crd: CustomResourceDefinition) -> CustomResourceDefinition {
    fn walk(value: &mut serde_json::Value) {
        match value {
            serde_json::Value::Object(map) => {
                let unknown = map
                    .get("format")
                    .and_then(|f| f.as_str())
                    .is_some_and(|f| f.starts_with("uint"));
                if unknown && map.get("type").and_then(|t| t.as_str()) == Some("integer") {
                    map.remove("format");
                }
                map.values_mut().for_each(walk);
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(walk),
            _ => {}
        }
    }
    let mut value = serde_json::to_value(&crd).expect("a CRD serializes");
    walk(&mut value);
    serde_json::from_value(value).expect("a tidied CRD deserializes")
}

/// Renders every CRD as YAML, one document per CRD.
pub fn render() -> Result<Vec<RenderedCrd>, serde_norway::Error> {
    definitions()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            Ok(RenderedCrd {
                file_name: format!("{name}.yaml"),
                yaml: serde_norway::to_string(&crd)?,
            })
        })
        .collect()
}

/// All CRDs as one multi-document YAML stream, as `gpufleet crds` prints it.
pub fn render_all() -> Result<String, serde_norway::Error> {
    Ok(render()?
        .into_iter()
        .map(|crd| format!("---\n{}", crd.yaml))
        .collect())
}

/// Applies both CRDs to a cluster (server-side apply as `field_manager`)
/// and waits until each is Established: what `gpufleet demo` and
/// `gpufleet bench` do on their control planes.
pub async fn install(client: &kube::Client, field_manager: &str) -> anyhow::Result<()> {
    use anyhow::Context as _;
    use kube::api::{Api, Patch, PatchParams};
    use kube::runtime::wait::{await_condition, conditions};
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let params = PatchParams::apply(field_manager).force();
    for crd in definitions() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &params, &Patch::Apply(&crd))
            .await
            .with_context(|| format!("installing CRD {name}"))?;
        tokio::time::timeout(
            std::time::Duration::from_secs(60),
            await_condition(api.clone(), &name, conditions::is_crd_established()),
        )
        .await
        .map_err(|_| anyhow::anyhow!("CRD {name} not Established within 60s"))??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const REGENERATE: &str = "run `cargo run -- crds --out-dir crds` and commit the result";

    /// The test bed's ClusterProfile CRD is what the renderer prints; with
    /// GPUFLEET_REGENERATE=1 this test writes it.
    #[test]
    fn the_test_beds_clusterprofile_crd_matches_the_renderer() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/crds");
        for crd in test_bed_definitions() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            let path = dir.join(format!("{name}.yaml"));
            let yaml = format!(
                "# A stand-in for the test bed, rendered by gpufleet from the part of\n\
                 # the SIG-Multicluster ClusterProfile API (KEP-4322, KEP-5339) it reads.\n\
                 # Regenerate: GPUFLEET_REGENERATE=1 cargo test --lib crds\n{}",
                serde_norway::to_string(&crd).expect("renders")
            );
            if std::env::var_os("GPUFLEET_REGENERATE").is_some() {
                std::fs::write(&path, &yaml).expect("writing the test bed CRD");
            }
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == yaml,
                "{} is stale: GPUFLEET_REGENERATE=1 cargo test --lib crds",
                path.display()
            );
        }
    }

    /// The committed `crds/` folder is exactly what the renderer prints.
    #[test]
    fn committed_crds_match_the_renderer() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        let rendered = render().expect("CRDs render");
        for crd in &rendered {
            let path = dir.join(&crd.file_name);
            let committed = std::fs::read_to_string(&path)
                .unwrap_or_else(|e| panic!("{} is missing ({e}): {REGENERATE}", path.display()));
            if committed != crd.yaml {
                let line = committed
                    .lines()
                    .zip(crd.yaml.lines())
                    .position(|(a, b)| a != b)
                    .map_or_else(
                        || committed.lines().count().min(crd.yaml.lines().count()) + 1,
                        |i| i + 1,
                    );
                panic!(
                    "{} is stale (first difference at line {line}): {REGENERATE}",
                    path.display()
                );
            }
        }
        let mut extra: Vec<_> = std::fs::read_dir(&dir)
            .expect("crds/ exists")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| !rendered.iter().any(|crd| &crd.file_name == name))
            .collect();
        extra.sort();
        assert!(
            extra.is_empty(),
            "crds/ holds files the renderer does not make: {extra:?}"
        );
    }

    /// Client-side `kubectl apply` stores the whole object in an annotation
    /// capped at 256 KiB; stay well under it.
    #[test]
    fn each_crd_fits_client_side_apply() {
        for crd in definitions() {
            let json = serde_json::to_vec(&crd).expect("serializes");
            assert!(
                json.len() < 128 * 1024,
                "{:?} is {} bytes",
                crd.metadata.name,
                json.len()
            );
        }
    }

    #[test]
    fn every_kind_has_its_scope_a_status_and_the_category() {
        for crd in definitions() {
            // FleetRollout lives on a hub beside the ClusterProfiles it reads,
            // which are namespaced; the node-side kinds are cluster-scoped.
            let scope = if crd.spec.names.kind == "FleetRollout" {
                "Namespaced"
            } else {
                "Cluster"
            };
            assert_eq!(crd.spec.scope, scope);
            assert_eq!(
                crd.spec.names.categories.as_deref(),
                Some(&["gpufleet".to_string()][..])
            );
            let version = &crd.spec.versions[0];
            assert!(
                version
                    .subresources
                    .as_ref()
                    .and_then(|s| s.status.as_ref())
                    .is_some()
            );
        }
    }
}
