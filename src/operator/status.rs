//! The one writer of status, for batches and pools alike: a merge patch of
//! the status subresource, under gpufleet's field manager.

use std::fmt::Debug;

use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::core::ClusterResourceScope;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use crate::api::{GpuPool, GpuPoolStatus, RolloutBatch, RolloutBatchStatus};
use crate::keys;

use super::act::may_write;
use super::context::Context;
use super::error::Error;

/// A kind whose status the operator writes.
pub trait WithStatus:
    Resource<DynamicType = (), Scope = ClusterResourceScope> + Clone + Debug + DeserializeOwned
{
    type Status: Serialize;
    /// What messages call one ("batch", "pool").
    const NOUN: &'static str;
}

impl WithStatus for RolloutBatch {
    type Status = RolloutBatchStatus;
    const NOUN: &'static str = "batch";
}

impl WithStatus for GpuPool {
    type Status = GpuPoolStatus;
    const NOUN: &'static str = "pool";
}

/// Writes the status of the object `name` of kind `K`, if this replica
/// still leads.
pub async fn write_status<K: WithStatus>(
    ctx: &Context,
    name: &str,
    status: &K::Status,
) -> Result<(), Error> {
    let what = || format!("writing status of {} {name}", K::NOUN);
    may_write(ctx, &what()).await?;
    let api: Api<K> = Api::all(ctx.client.clone());
    let params = PatchParams {
        field_manager: Some(keys::FIELD_MANAGER.into()),
        ..Default::default()
    };
    api.patch_status(name, &params, &Patch::Merge(json!({ "status": status })))
        .await
        .map_err(Error::kube(what()))?;
    Ok(())
}
