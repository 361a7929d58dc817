//! What the operator's node cache holds per node, counted by the allocator:
//! a fleet of GB200 trays labelled as GPU Feature Discovery and Node Feature
//! Discovery label them, with the conditions a node problem detector adds,
//! admitted with a verdict, turned into the cache's views. The bytes are
//! counted (a global allocator that adds up what is live), not timed, so
//! the figure is the same on any machine and under any load.
//!
//! The allocator's count is what was asked for, not what the allocator's
//! chunks round it up to: the process's resident memory a node is higher
//! (BENCHMARKS.md has it, measured).

#![recursion_limit = "256"]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use gpufleet::operator::{NodeCache, view_event};
use k8s_openapi::api::core::v1::Node;
use kube::runtime::watcher::Event;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Tray `n` of NVL72 domain `d`, as the API server serves it once GFD, NFD
/// and a node problem detector have labelled it and gpufleet admitted it.
fn tray(d: usize, n: usize) -> Node {
    let name = format!("gb200-r{d:04}-t{n:02}");
    let clique = format!("7f3c1a2e-93b4-4c5d-8e6f-0a1b2c3d4e5f.{d}");
    let mut labels = serde_json::json!({
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "arm64",
        "beta.kubernetes.io/os": "linux",
        "beta.kubernetes.io/arch": "arm64",
        "node.kubernetes.io/instance-type": "gb200-nvl72-tray",
        "topology.kubernetes.io/zone": "hall-b",
        "topology.kubernetes.io/region": "memphis-2",
        "gpufleet.io/pool": "colossus",
        "gpufleet.io/batch": "delivery-2026-12",
        "gpufleet.io/state": "ready",
        "nvidia.com/gpu.clique": clique,
        "nvidia.com/gpu.product": "NVIDIA-GB200",
        "nvidia.com/gpu.count": "4",
        "nvidia.com/gpu.memory": "189471",
        "nvidia.com/gpu.family": "blackwell",
        "nvidia.com/gpu.machine": "GB200-NVL72",
        "nvidia.com/gpu.compute.major": "10",
        "nvidia.com/gpu.compute.minor": "0",
        "nvidia.com/gpu.replicas": "1",
        "nvidia.com/gpu.sharing-strategy": "none",
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.deploy.driver": "true",
        "nvidia.com/gpu.deploy.gpu-feature-discovery": "true",
        "nvidia.com/gpu.deploy.dcgm-exporter": "true",
        "nvidia.com/gpu.deploy.device-plugin": "true",
        "nvidia.com/cuda.driver-version.full": "570.133.20",
        "nvidia.com/cuda.driver-version.major": "570",
        "nvidia.com/cuda.driver-version.minor": "133",
        "nvidia.com/cuda.driver-version.revision": "20",
        "nvidia.com/cuda.runtime-version.full": "12.8",
        "nvidia.com/cuda.runtime-version.major": "12",
        "nvidia.com/cuda.runtime-version.minor": "8",
        "nvidia.com/mig.capable": "true",
        "nvidia.com/mps.capable": "false",
        "nvidia.com/gfd.timestamp": format!("{}", 1_764_700_000 + d * 18 + n),
        "feature.node.kubernetes.io/kernel-version.full": "6.8.0-1021-nvidia-64k",
        "feature.node.kubernetes.io/kernel-version.major": "6",
        "feature.node.kubernetes.io/kernel-version.minor": "8",
        "feature.node.kubernetes.io/pci-10de.present": "true",
        "feature.node.kubernetes.io/pci-15b3.present": "true",
        "feature.node.kubernetes.io/system-os_release.ID": "ubuntu",
        "feature.node.kubernetes.io/system-os_release.VERSION_ID": "24.04",
        "feature.node.kubernetes.io/cpu-model.vendor_id": "ARM",
        "feature.node.kubernetes.io/cpu-cpuid.ASIMD": "true",
        "feature.node.kubernetes.io/cpu-cpuid.SVE2": "true",
        "feature.node.kubernetes.io/memory-numa": "true",
        "feature.node.kubernetes.io/network-sriov.capable": "true",
    });
    labels["gpufleet.io/state"] = "ready".into();
    let condition = |kind: &str, status: &str| {
        serde_json::json!({
            "type": kind, "status": status,
            "lastHeartbeatTime": "2026-12-02T10:00:00Z",
            "lastTransitionTime": "2026-12-01T08:00:00Z",
            "reason": "KubeletReady", "message": "kubelet is posting ready status",
        })
    };
    let node = serde_json::json!({
        "metadata": {
            "name": name,
            "resourceVersion": format!("{}", 81_234_567 + d * 18 + n),
            "creationTimestamp": "2026-12-01T07:00:00Z",
            "labels": labels,
            "annotations": {
                "gpufleet.io/batch": "delivery-2026-12",
                "gpufleet.io/batch-uid": "5b0f8a52-2c1e-4d7a-9e31-6f4b2a8c9d10",
                "gpufleet.io/wave": "3",
                "gpufleet.io/since": "2026-12-01T09:12:00Z",
                "gpufleet.io/started": "2026-12-01T08:40:00Z",
                "gpufleet.io/attempt": "1",
                "gpufleet.io/admitted": "2026-12-01T09:12:00Z",
                "gpufleet.io/recorded-state": "ready",
                "gpufleet.io/verdict": format!(
                    "{{\"clique\":\"{clique}\",\"fabric\":true,\"firmware\":{{\"driver\":\"570.133.20\",\"gsp\":\"570.133.20\",\"inforom\":\"G548.0201.00.06\",\"vbios\":\"96.00.a5.00.01\"}}}}"
                ),
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        },
        "spec": {"podCIDR": "10.64.0.0/24"},
        "status": {
            "allocatable": {"cpu": "71", "memory": "470Gi", "pods": "110", "nvidia.com/gpu": "4"},
            "capacity": {"cpu": "72", "memory": "480Gi", "pods": "110", "nvidia.com/gpu": "4"},
            "conditions": [
                condition("MemoryPressure", "False"),
                condition("DiskPressure", "False"),
                condition("PIDPressure", "False"),
                condition("Ready", "True"),
                condition("GpuXidError", "False"),
                condition("NVLinkDown", "False"),
                condition("KernelDeadlock", "False"),
            ],
        },
    });
    serde_json::from_value(node).expect("a node")
}

/// Live heap bytes per node of `domains` NVL72 domains of 18 trays in the
/// operator's node cache, filled as a watch's first list fills it.
fn bytes_per_node(domains: usize) -> f64 {
    let count = domains * 18;
    let cache = NodeCache::default();
    let mut write = cache.writer();
    let before = LIVE.load(Ordering::SeqCst);
    write(&view_event(Event::Init));
    // Each Node is made, turned into its view and dropped, as the watch
    // does: what stays is the cache's.
    for (d, n) in (0..domains).flat_map(|d| (0..18).map(move |n| (d, n))) {
        write(&view_event(Event::InitApply(tray(d, n))));
    }
    write(&view_event(Event::InitDone));
    let after = LIVE.load(Ordering::SeqCst);
    let cached = cache.select(|_| true);
    assert_eq!(cached.len(), count, "every node is cached");
    assert_eq!(cached[0].labels.len(), 48, "{:?}", cached[0].labels);
    drop(cached);
    (after - before) as f64 / count as f64
}

/// 8,418 bytes a tray before the labels and strings were interned
/// (2026-12-02), 1,241 after; 1,061 once a label pair was one allocation
/// and the name, resourceVersion and times were held inline (2026-12-03).
/// The bound leaves room for a field or two and fails long before either
/// old layout would come back.
#[test]
fn a_cached_gb200_tray_takes_under_1152_bytes() {
    let per_node = bytes_per_node(100);
    eprintln!("{per_node:.0} bytes a cached node (1,800 GB200 trays, 48 labels each)");
    assert!(
        per_node < 1152.0,
        "{per_node:.0} bytes a cached node: the cache's views grew (1,061 on 2026-12-03)"
    );
}
