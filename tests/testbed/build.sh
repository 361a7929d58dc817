#!/usr/bin/env bash
# Builds the test bed's binaries from their Go modules and caches them outside
# the clone, keyed by version (kstatus, the test bed's own helper, by the
# cli-utils version it is built on and a hash of its source):
#   ${GPUFLEET_CACHE:-${XDG_CACHE_HOME:-~/.cache}/gpufleet}/testbed/<tool>-<version>/bin
# A fresh machine builds once (about ten minutes on two cores); a fresh clone on
# the same machine finds the cache and returns at once. Prints the bin folders,
# one a line, in this order: k8s, etcd, kwok, helm, kstatus, kcm (kube-controller-manager,
# the benchmark's peer).
#
#   tests/testbed/build.sh            build what is missing
#   tests/testbed/build.sh --print    only print where the binaries are (or will be)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${GPUFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpufleet}/testbed"
print_only=false
[[ "${1:-}" == "--print" ]] && print_only=true

# The version a module requires, read from its go.mod so there is one source.
required() { awk -v m="$2" '$1 == m || ($1 == "require" && $2 == m) { print ($1 == m ? $2 : $3); exit }' "$here/go/$1/go.mod"; }

k8s_version="$(required kube k8s.io/kubernetes)"
etcd_version="$(required etcd go.etcd.io/etcd/server/v3)"
kwok_version="$(required kwok sigs.k8s.io/kwok)"
helm_version="$(required helm helm.sh/helm/v3)"
kcm_version="$(required kcm k8s.io/kubernetes)"
kstatus_key="kstatus-$(required kstatus sigs.k8s.io/cli-utils)-$(cat "$here"/go/kstatus/{go.mod,go.sum,main.go} | sha256sum | cut -c1-8)"

# Go 1.26 (the machine's own) for everything: Go 1.27 turns on encoding/json/v2
# and produces a kube-apiserver whose OpenAPI endpoints are malformed.
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=readonly

# build <module dir> <cache key> <out name> <package> [ldflags]
build() {
  local dir="$1" key="$2" name="$3" pkg="$4" ldflags="${5:-}"
  local bin="$cache/$key/bin"
  if [[ -x "$bin/$name" ]]; then return 0; fi
  mkdir -p "$bin"
  echo "testbed: building $name ($key) ..." >&2
  local start=$SECONDS
  (cd "$here/go/$dir" && go build -trimpath -ldflags "-s -w $ldflags" -o "$bin/.$name.tmp" "$pkg")
  mv "$bin/.$name.tmp" "$bin/$name"
  echo "testbed: built $name in $((SECONDS - start))s" >&2
}

minor="${k8s_version#v1.}"; minor="${minor%%.*}"
kube_ldflags=""
for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
  kube_ldflags+=" -X $p.gitVersion=$k8s_version -X $p.gitMajor=1 -X $p.gitMinor=$minor"
  kube_ldflags+=" -X $p.gitTreeState=clean -X $p.buildDate=1970-01-01T00:00:00Z"
done

# helm's version, and the Kubernetes version it assumes without a cluster
# (`helm template`, `helm lint`): one minor past its client-go, as its Makefile does.
helm_k8s_minor="$(required helm k8s.io/client-go)"; helm_k8s_minor="${helm_k8s_minor#v0.}"
helm_k8s_minor="${helm_k8s_minor%%.*}"
helm_ldflags="-X helm.sh/helm/v3/internal/version.version=$helm_version"
helm_ldflags+=" -X helm.sh/helm/v3/internal/version.gitTreeState=clean"
for p in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
  helm_ldflags+=" -X $p.k8sVersionMajor=1 -X $p.k8sVersionMinor=$helm_k8s_minor"
done

if ! $print_only; then
  build kube "k8s-$k8s_version" kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver "$kube_ldflags"
  build kube "k8s-$k8s_version" kubectl k8s.io/kubernetes/cmd/kubectl "$kube_ldflags"
  build etcd "etcd-$etcd_version" etcd gpufleet.io/testbed/etcd
  build kwok "kwok-$kwok_version" kwok sigs.k8s.io/kwok/cmd/kwok \
    "-X sigs.k8s.io/kwok/pkg/consts.Version=$kwok_version"
  build helm "helm-$helm_version" helm helm.sh/helm/v3/cmd/helm "$helm_ldflags"
  build kstatus "$kstatus_key" kstatus gpufleet.io/testbed/kstatus
  build kcm "kcm-$kcm_version" kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager "$kube_ldflags"
fi

echo "$cache/k8s-$k8s_version/bin"
echo "$cache/etcd-$etcd_version/bin"
echo "$cache/kwok-$kwok_version/bin"
echo "$cache/helm-$helm_version/bin"
echo "$cache/$kstatus_key/bin"
echo "$cache/kcm-$kcm_version/bin"
