//! What the CRDs' schema and CEL rules check at admission, for objects read
//! from elsewhere (files for `gpufleet plan`, or an object that slipped past
//! an older CRD): one function per kind, each problem named by its field.
//! The CRD stays the first line of defence; these mirror the rules a plan
//! depends on.

use super::{GpuPool, RolloutBatch};

/// A field and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct FieldError {
    /// Its path, as `kubectl explain` spells it (`spec.waves[0].nodes`).
    pub field: String,
    pub problem: String,
}

fn error(field: impl Into<String>, problem: impl Into<String>) -> FieldError {
    FieldError {
        field: field.into(),
        problem: problem.into(),
    }
}

impl GpuPool {
    /// The first problem of the pool, if any.
    pub fn validate(&self) -> Result<(), FieldError> {
        let spec = &self.spec;
        if self.metadata.name.as_deref().unwrap_or_default().is_empty() {
            return Err(error("metadata.name", "the pool has no name"));
        }
        if spec.hardware.gpu_product.is_empty() {
            return Err(error(
                "spec.hardware.gpuProduct",
                "lists no accepted product",
            ));
        }
        let topology = &spec.topology;
        if topology.nodes_per_domain == 0 {
            return Err(error("spec.topology.nodesPerDomain", "must be at least 1"));
        }
        if let Some(min) = topology.min_healthy_nodes_per_domain
            && !(1..=topology.nodes_per_domain).contains(&min)
        {
            return Err(error(
                "spec.topology.minHealthyNodesPerDomain",
                format!(
                    "is {min}, must be 1 to nodesPerDomain ({})",
                    topology.nodes_per_domain
                ),
            ));
        }
        if let Some(power) = &spec.power {
            if !(1..=2_000_000).contains(&power.budget_kilowatts) {
                return Err(error(
                    "spec.power.budgetKilowatts",
                    format!("is {}, must be 1 to 2000000 (2 GW)", power.budget_kilowatts),
                ));
            }
            if let Some(ramp) = power.ramp_kilowatts_per_minute
                && !(1..=2_000_000).contains(&ramp)
            {
                return Err(error(
                    "spec.power.rampKilowattsPerMinute",
                    format!("is {ramp}, must be 1 to 2000000"),
                ));
            }
            if let Some(w) = power.node_watts
                && !(1..=100_000).contains(&w)
            {
                return Err(error(
                    "spec.power.nodeWatts",
                    format!("is {w}, must be 1 to 100000"),
                ));
            }
            if let Some((product, w)) = power
                .product_watts
                .iter()
                .find(|(_, w)| !(1..=100_000).contains(*w))
            {
                return Err(error(
                    format!("spec.power.productWatts[{product}]"),
                    format!("is {w}, must be 1 to 100000"),
                ));
            }
        }
        if let Err((field, problem)) = crate::planner::windows::check(&spec.windows) {
            return Err(error(field, problem));
        }
        let checks = &spec.health_checks;
        if checks.probe.is_none() && (checks.fabric.is_some() || checks.firmware.is_some()) {
            return Err(error(
                "spec.healthChecks.probe",
                "the fabric and firmware gates read the probe's verdict: set probe (for example one that runs `gpufleet probe`)",
            ));
        }
        if let Some(probe) = &spec.health_checks.probe {
            let pod = probe.template.spec.as_ref();
            // `serviceAccount` is the field's old name: it counts too.
            if pod.is_some_and(|p| p.service_account_name.is_some() || p.service_account.is_some())
            {
                return Err(error(
                    "spec.healthChecks.probe.template.spec.serviceAccountName",
                    "probe pods run as gpufleet's probe ServiceAccount: leave it out",
                ));
            }
            if pod.is_some_and(|p| p.automount_service_account_token.is_some()) {
                return Err(error(
                    "spec.healthChecks.probe.template.spec.automountServiceAccountToken",
                    "set healthChecks.probe.serviceAccountToken instead",
                ));
            }
            // A projected token is a token too: only for a pool that opts in.
            let projects_token = pod
                .and_then(|p| p.volumes.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|v| v.projected.as_ref()?.sources.as_ref())
                .flatten()
                .any(|source| source.service_account_token.is_some());
            if projects_token && !probe.service_account_token {
                return Err(error(
                    "spec.healthChecks.probe.template.spec.volumes",
                    "a projected serviceAccountToken volume mounts an API token: set serviceAccountToken: true if the probe needs one",
                ));
            }
        }
        Ok(())
    }
}

impl RolloutBatch {
    /// The first problem of the batch, if any.
    pub fn validate(&self) -> Result<(), FieldError> {
        if self.metadata.name.as_deref().unwrap_or_default().is_empty() {
            return Err(error("metadata.name", "the batch has no name"));
        }
        if self.spec.waves.is_empty() {
            return Err(error("spec.waves", "lists no wave"));
        }
        for (i, wave) in self.spec.waves.iter().enumerate() {
            match (wave.nodes, wave.percent) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(error(
                        format!("spec.waves[{i}]"),
                        "set exactly one of nodes or percent",
                    ));
                }
                (Some(0), _) => {
                    return Err(error(
                        format!("spec.waves[{i}].nodes"),
                        "must be at least 1",
                    ));
                }
                (_, Some(p)) if !(1..=100).contains(&p) => {
                    return Err(error(
                        format!("spec.waves[{i}].percent"),
                        format!("is {p}, must be 1 to 100"),
                    ));
                }
                _ => {}
            }
        }
        if let Err((field, problem)) = crate::planner::windows::check(&self.spec.windows) {
            return Err(error(field, problem));
        }
        Ok(())
    }
}
