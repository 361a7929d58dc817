//! Node writes this replica made that the node watch has not delivered yet.
//!
//! After a reconcile patches nodes it waits, briefly, until the node cache
//! holds what it wrote, so that the next plan never works from older state
//! than this one wrote. A resourceVersion is opaque (only equality means
//! anything), so "the cache holds it" cannot be "the cached version is at
//! least the written one": instead each node is registered before its
//! write goes out, every version the watch delivers for it from then on is
//! noted, and the write is delivered once the watch has shown its version,
//! or the node's deletion.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use kube::runtime::watcher;

use crate::planner::NodeView;

use super::observe::NodeCache;

/// The nodes being written, each with what the watch delivered for it since
/// its write was registered.
#[derive(Debug, Default)]
pub struct Deliveries {
    nodes: Mutex<HashMap<String, Delivered>>,
}

#[derive(Debug, Default)]
struct Delivered {
    /// Tickets held for this node (writes in flight or being waited on).
    tickets: usize,
    /// Every resourceVersion the watch delivered since the first ticket.
    versions: HashSet<String>,
    /// The watch delivered the node's deletion.
    deleted: bool,
}

/// A node registered for a write; while it is held the watch's deliveries
/// for that node are noted. Dropping it forgets them.
#[derive(Debug)]
pub struct Ticket {
    deliveries: Arc<Deliveries>,
    node: String,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut nodes = self.deliveries.lock();
        if let Some(entry) = nodes.get_mut(&self.node) {
            entry.tickets -= 1;
            if entry.tickets == 0 {
                nodes.remove(&self.node);
            }
        }
    }
}

impl Deliveries {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Delivered>> {
        // Every change under the lock is a single insert, remove or update.
        self.nodes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `node` before a write to it is sent, so that no delivery
    /// of the write can be missed.
    pub fn register(self: &Arc<Self>, node: &str) -> Ticket {
        self.lock().entry(node.to_string()).or_default().tickets += 1;
        Ticket {
            deliveries: self.clone(),
            node: node.to_string(),
        }
    }

    /// One node watch event, once the node cache has applied it. Only
    /// changes and deletions count: a relist's nodes reach the cache as a
    /// whole at its end, where [`Deliveries::delivered`] finds them cached.
    pub fn observe(&self, event: &watcher::Event<Arc<NodeView>>) {
        let (node, deleted) = match event {
            watcher::Event::Apply(node) => (node, false),
            watcher::Event::Delete(node) => (node, true),
            _ => return,
        };
        let mut nodes = self.lock();
        let Some(entry) = nodes.get_mut(node.name.as_str()) else {
            return;
        };
        if deleted {
            entry.deleted = true;
        } else if let Some(version) = &node.resource_version {
            entry.versions.insert(version.to_string());
        }
    }

    /// Whether the watch has delivered `version` of the ticket's node (or
    /// the node's deletion), or the cache holds that very version, or no
    /// longer holds the node at all.
    pub fn delivered(&self, ticket: &Ticket, version: &str, cache: &NodeCache) -> bool {
        {
            let nodes = self.lock();
            if let Some(entry) = nodes.get(&ticket.node)
                && (entry.deleted || entry.versions.contains(version))
            {
                return true;
            }
        }
        cache
            .get(&ticket.node)
            .is_none_or(|n| n.resource_version.as_deref() == Some(version))
    }

    /// How many nodes are registered (for tests).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.lock().len()
    }
}

/// A node as this replica wrote it: the ticket taken before the write, and
/// the resourceVersion the API server gave the write.
#[derive(Debug)]
pub struct Written {
    pub ticket: Ticket,
    pub resource_version: Option<String>,
}

/// Waits, at most `within`, until the node watch has delivered every write
/// in `written`. Returns the node it gave up on, if any.
pub async fn wait_delivered(
    deliveries: &Deliveries,
    cache: &NodeCache,
    written: &[Written],
    within: Duration,
) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    for write in written {
        let Some(version) = write.resource_version.as_deref() else {
            continue;
        };
        while !deliveries.delivered(&write.ticket, version, cache) {
            if tokio::time::Instant::now() >= deadline {
                return Some(write.ticket.node.clone());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(name: &str, version: &str) -> Arc<NodeView> {
        let mut node = k8s_openapi::api::core::v1::Node::default();
        node.metadata.name = Some(name.into());
        node.metadata.resource_version = Some(version.into());
        Arc::new(NodeView::from(&node))
    }

    /// The cache and the deliveries see one event, in the node watch's
    /// order: the cache first.
    fn deliver(
        cache_writer: &mut impl FnMut(&watcher::Event<Arc<NodeView>>),
        deliveries: &Deliveries,
        event: watcher::Event<Arc<NodeView>>,
    ) {
        cache_writer(&event);
        deliveries.observe(&event);
    }

    fn written(deliveries: &Arc<Deliveries>, node: &str, version: &str) -> Written {
        Written {
            ticket: deliveries.register(node),
            resource_version: Some(version.into()),
        }
    }

    const SHORT: Duration = Duration::from_millis(100);

    #[tokio::test]
    async fn a_write_is_delivered_when_the_watch_shows_its_version_not_a_bigger_number() {
        let deliveries = Arc::new(Deliveries::default());
        let cache = NodeCache::default();
        let mut writer = cache.writer();
        deliver(
            &mut writer,
            &deliveries,
            watcher::Event::Apply(view("n1", "5")),
        );
        let write = [written(&deliveries, "n1", "9")];
        // The watch delivers "10" (an earlier change, numerically bigger):
        // comparing numbers would call "9" delivered; it is not.
        deliver(
            &mut writer,
            &deliveries,
            watcher::Event::Apply(view("n1", "10")),
        );
        assert_eq!(
            wait_delivered(&deliveries, &cache, &write, SHORT)
                .await
                .as_deref(),
            Some("n1")
        );
        // "9" arrives, then a later change: delivered, though the cache has
        // moved on to a version that is not "9".
        deliver(
            &mut writer,
            &deliveries,
            watcher::Event::Apply(view("n1", "9")),
        );
        deliver(
            &mut writer,
            &deliveries,
            watcher::Event::Apply(view("n1", "8")),
        );
        assert_eq!(
            wait_delivered(&deliveries, &cache, &write, SHORT).await,
            None
        );
    }

    #[tokio::test]
    async fn versions_need_not_be_numbers() {
        let deliveries = Arc::new(Deliveries::default());
        let cache = NodeCache::default();
        let mut writer = cache.writer();
        deliver(
            &mut writer,
            &deliveries,
            watcher::Event::Apply(view("n1", "xyz")),
        );
        let write = [written(&deliveries, "n1", "abc")];
        assert!(
            wait_delivered(&deliveries, &cache, &write, SHORT)
                .await
                .is_some()
        );
        let waiting = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            deliver(
                &mut writer,
                &deliveries,
                watcher::Event::Apply(view("n1", "abc")),
            );
        };
        let (gave_up, ()) = tokio::join!(
            wait_delivered(&deliveries, &cache, &write, Duration::from_secs(5)),
            waiting
        );
        assert_eq!(gave_up, None);
    }

    #[tokio::test]
    async fn a_deleted_node_counts_as_delivered() {
        let deliveries = Arc::new(Deliveries::default());
        let cache = NodeCache::default();
        let mut writer = cache.writer();
        deliver(
            &mut writer,
            &deliveries,
            watcher::Event::Apply(view("n1", "1")),
        );
        let write = [written(&deliveries, "n1", "2")];
        // Its deletion, seen by the watch (the view carries the version it
        // was deleted at, which need not be the one written).
        deliver(
            &mut writer,
            &deliveries,
            watcher::Event::Delete(view("n1", "3")),
        );
        assert_eq!(
            wait_delivered(&deliveries, &cache, &write, SHORT).await,
            None
        );
    }

    #[tokio::test]
    async fn a_relist_that_holds_the_version_delivers_it() {
        let deliveries = Arc::new(Deliveries::default());
        let cache = NodeCache::default();
        let mut writer = cache.writer();
        deliver(
            &mut writer,
            &deliveries,
            watcher::Event::Apply(view("n1", "a")),
        );
        let write = [written(&deliveries, "n1", "b")];
        deliver(&mut writer, &deliveries, watcher::Event::Init);
        deliver(
            &mut writer,
            &deliveries,
            watcher::Event::InitApply(view("n1", "b")),
        );
        // Listed but not cached yet: not delivered.
        assert!(
            wait_delivered(&deliveries, &cache, &write, SHORT)
                .await
                .is_some()
        );
        deliver(&mut writer, &deliveries, watcher::Event::InitDone);
        assert_eq!(
            wait_delivered(&deliveries, &cache, &write, SHORT).await,
            None
        );
    }

    #[test]
    fn tickets_keep_a_node_registered_until_the_last_is_dropped() {
        let deliveries = Arc::new(Deliveries::default());
        let first = deliveries.register("n1");
        let second = deliveries.register("n1");
        deliveries.observe(&watcher::Event::Apply(view("n1", "7")));
        deliveries.observe(&watcher::Event::Apply(view("n2", "7")));
        assert_eq!(deliveries.len(), 1);
        drop(first);
        let cache = NodeCache::default();
        let mut writer = cache.writer();
        writer(&watcher::Event::Apply(view("n1", "8")));
        assert!(deliveries.delivered(&second, "7", &cache));
        drop(second);
        assert_eq!(deliveries.len(), 0);
        // Nothing is noted for a node no one is writing.
        deliveries.observe(&watcher::Event::Apply(view("n1", "9")));
        assert_eq!(deliveries.len(), 0);
    }
}
