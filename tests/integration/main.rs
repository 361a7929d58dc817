//! Integration tests against a real kube-apiserver and etcd (the test bed).
//! Every test of this binary shares one control plane; see `support`.

mod support;

mod bench;
mod chart;
mod crds;
mod demo;
mod fleet;
mod gitops;
mod operations;
mod plugin;
mod rollout;
mod validation;
