#!/usr/bin/env bash
# The whole test suite, as the README and CI run it:
#   1. build the test bed (kube-apiserver, kubectl, etcd, kwok) into the cache
#      if it is not there yet (minutes, once per machine);
#   2. check formatting and lints;
#   3. run every test: unit, property and integration. The integration tests
#      start one real control plane for the whole run and stop it afterwards
#      (or use GPUFLEET_TEST_KUBECONFIG, a disposable cluster of yours).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

start=$SECONDS
echo "== test bed"
tests/testbed/build.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (with the dev tools, then the production build)"
cargo clippy --locked --all-targets -- -D warnings
# The production build (the Dockerfile's) leaves the dev tools out: it
# must build too.
cargo clippy --locked --no-default-features -- -D warnings
echo "== cargo test"
cargo test --locked "$@"
echo "== all tests passed in $((SECONDS - start))s"
