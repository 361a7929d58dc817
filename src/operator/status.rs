//! The one writer of status, for batches and pools alike: a merge patch of
//! the status subresource, under gpufleet's field manager. A merge patch
//! keeps what it leaves out, so every field the previous status had and the
//! new one has not is written as null (removed): a cleared gate or wave
//! progress does not linger.

use std::fmt::Debug;

use kube::Resource;
use kube::api::{Api, Patch, PatchParams};
use kube::core::ClusterResourceScope;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

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
/// still leads; `previous` is the status it replaces, as last read.
pub async fn write_status<K: WithStatus>(
    ctx: &Context,
    name: &str,
    status: &K::Status,
    previous: Option<&K::Status>,
) -> Result<(), Error> {
    let what = || format!("writing status of {} {name}", K::NOUN);
    may_write(ctx, &what()).await?;
    let api: Api<K> = Api::all(ctx.client.clone());
    let params = PatchParams {
        field_manager: Some(keys::FIELD_MANAGER.into()),
        ..Default::default()
    };
    let new = serde_json::to_value(status).unwrap_or(Value::Null);
    let old = previous
        .and_then(|p| serde_json::to_value(p).ok())
        .unwrap_or(Value::Null);
    let body = json!({ "status": with_removals(new, &old) });
    api.patch_status(name, &params, &Patch::Merge(body))
        .await
        .map_err(Error::kube(what()))?;
    Ok(())
}

/// `new` as a merge patch over `old`: every object key `old` has and `new`
/// lacks becomes null, at any depth (lists are replaced whole).
fn with_removals(new: Value, old: &Value) -> Value {
    match (new, old) {
        (Value::Object(mut new), Value::Object(old)) => {
            for (key, was) in old {
                match new.remove(key) {
                    Some(now) => {
                        new.insert(key.clone(), with_removals(now, was));
                    }
                    None => {
                        new.insert(key.clone(), Value::Null);
                    }
                }
            }
            Value::Object(new)
        }
        (new, _) => new,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_the_new_status_lacks_are_removed() {
        let old = json!({"gate": {"name": "Paused"}, "waveProgress": "1/3",
                         "breaker": {"tripped": true, "trippedAt": "T"}, "conditions": [1, 2]});
        let new = json!({"waveProgress": "2/3", "breaker": {"tripped": false}, "conditions": [3]});
        assert_eq!(
            with_removals(new, &old),
            json!({"gate": null, "waveProgress": "2/3",
                   "breaker": {"tripped": false, "trippedAt": null}, "conditions": [3]})
        );
        let fresh = json!({"waveProgress": "1/3"});
        assert_eq!(with_removals(fresh.clone(), &Value::Null), fresh);
    }
}
