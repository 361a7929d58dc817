#!/usr/bin/env bash
# Builds the test bed's binaries from their Go modules and caches them outside
# the clone, keyed by version (kstatus, the test bed's own helper, by the
# cli-utils version it is built on and a hash of its source):
#   ${GPUFLEET_CACHE:-${XDG_CACHE_HOME:-~/.cache}/gpufleet}/testbed/<tool>-<version>/bin
# A fresh machine builds once (about ten minutes on two cores for all of
# them); a fresh clone on the same machine finds the cache and returns at
# once. Each build says which tool it is (n of N) and, every 15 s, how long
# it has run and how far it got. Prints the bin folders, one a line, in this
# order: k8s, etcd, kwok, helm, kstatus, kcm (kube-controller-manager, the
# benchmark's peer).
#
#   tests/testbed/build.sh            build what is missing
#   tests/testbed/build.sh TOOL...    build only these tools, if missing
#   tests/testbed/build.sh --print    only print where the binaries are (or
#                                     will be)
#
# TOOLs: kube-apiserver kubectl etcd kwok helm kstatus kube-controller-manager
# (`gpufleet demo` asks for kube-apiserver, etcd and kwok only).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${GPUFLEET_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/gpufleet}/testbed"
# Seconds between progress lines while a tool builds.
heartbeat="${GPUFLEET_BUILD_HEARTBEAT:-15}"
all_tools=(kube-apiserver kubectl etcd kwok helm kstatus
  kube-controller-manager)
print_only=false
tools=()
for arg in "$@"; do
  case "$arg" in
    --print) print_only=true ;;
    -*) echo "testbed: unknown option $arg" >&2; exit 2 ;;
    *)
      if [[ " ${all_tools[*]} " != *" $arg "* ]]; then
        echo "testbed: unknown tool $arg; the tools:" >&2
        echo "  ${all_tools[*]}" >&2
        exit 2
      fi
      tools+=("$arg")
      ;;
  esac
done
(( ${#tools[@]} > 0 )) || tools=("${all_tools[@]}")

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

# spec <tool>: sets what building it takes: the module dir, the cache key,
# the package and the linker flags.
spec() {
  case "$1" in
    kube-apiserver | kubectl)
      dir=kube key="k8s-$k8s_version" pkg="k8s.io/kubernetes/cmd/$1"
      ldflags="$kube_ldflags" ;;
    etcd)
      dir=etcd key="etcd-$etcd_version" pkg=gpufleet.io/testbed/etcd
      ldflags="" ;;
    kwok)
      dir=kwok key="kwok-$kwok_version" pkg=sigs.k8s.io/kwok/cmd/kwok
      ldflags="-X sigs.k8s.io/kwok/pkg/consts.Version=$kwok_version" ;;
    helm)
      dir=helm key="helm-$helm_version" pkg=helm.sh/helm/v3/cmd/helm
      ldflags="$helm_ldflags" ;;
    kstatus)
      dir=kstatus key="$kstatus_key" pkg=gpufleet.io/testbed/kstatus
      ldflags="" ;;
    kube-controller-manager)
      dir=kcm key="kcm-$kcm_version" pkg="k8s.io/kubernetes/cmd/$1"
      ldflags="$kube_ldflags" ;;
  esac
}

# mmss <seconds>: 75 -> 1m15s
mmss() {
  if (( $1 < 60 )); then echo "$1s"; return; fi
  printf '%dm%02ds\n' $(($1 / 60)) $(($1 % 60))
}

# follow <pid> <log> <name> <phase> [packages]: waits for a go command that
# writes to <log>, printing every $heartbeat seconds how long <name> has been
# building and how far the command got: modules downloaded, or packages
# compiled of those not in Go's build cache, then linking.
follow() {
  local pid="$1" log="$2" name="$3" phase="$4" total="${5:-}"
  local next=$((SECONDS + heartbeat)) got
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    (( SECONDS >= next )) || continue
    next=$((SECONDS + heartbeat))
    if [[ "$phase" == compiling ]]; then
      got="$(grep -vc '^go: ' "$log" || true)"
      if (( got < total )); then
        got="$got of $total packages compiled"
      else
        got="$got packages compiled, linking"
      fi
    else
      got="$(grep -c '^go: downloading' "$log" || true) modules downloaded"
    fi
    echo "testbed:   $name: $(mmss $((SECONDS - start))), $got" >&2
  done
  wait "$pid"
}

# build <tool> <n> <of>: builds one tool into its cache folder.
build() {
  local name="$1" n="$2" of="$3"
  spec "$name"
  local bin="$cache/$key/bin"
  mkdir -p "$bin"
  local log="$bin/.$name.log" deps="$bin/.$name.deps"
  echo "testbed: building $name ($key, $n of $of) ..." >&2
  start=$SECONDS
  # The packages it needs and Go's build cache lacks (a line each, empty for
  # the others); this downloads the modules that hold them.
  (cd "$here/go/$dir" && exec go list -trimpath -deps \
    -f '{{if .Stale}}{{.ImportPath}}{{end}}' "$pkg") >"$deps" 2>"$log" &
  go_pid=$!
  if ! follow "$go_pid" "$log" "$name" "downloading modules"; then
    echo "testbed: listing the packages of $name failed:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  (cd "$here/go/$dir" && exec go build -v -trimpath \
    -ldflags "-s -w $ldflags" -o "$bin/.$name.tmp" "$pkg") >"$log" 2>&1 &
  go_pid=$!
  if ! follow "$go_pid" "$log" "$name" compiling "$(grep -c . "$deps")"; then
    echo "testbed: building $name failed; the end of its output:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
  go_pid=""
  mv "$bin/.$name.tmp" "$bin/$name"
  rm -f "$log" "$deps"
  echo "testbed: built $name in $(mmss $((SECONDS - start)))" >&2
}

# A build in the background goes when this script does (Ctrl-C included).
go_pid=""
stop_go() { [[ -z "$go_pid" ]] || kill "$go_pid" 2>/dev/null || true; }
trap stop_go EXIT
trap 'stop_go; exit 130' INT TERM HUP

if ! $print_only; then
  missing=()
  for tool in "${tools[@]}"; do
    spec "$tool"
    [[ -x "$cache/$key/bin/$tool" ]] || missing+=("$tool")
  done
  if (( ${#missing[@]} > 0 )) && ! command -v go >/dev/null; then
    echo "testbed: building ${missing[*]} needs Go" >&2
    echo "testbed: (see go.dev/dl), and there is no go on the PATH" >&2
    exit 1
  fi
  n=0
  for tool in "${missing[@]}"; do
    n=$((n + 1))
    build "$tool" "$n" "${#missing[@]}"
  done
fi

echo "$cache/k8s-$k8s_version/bin"
echo "$cache/etcd-$etcd_version/bin"
echo "$cache/kwok-$kwok_version/bin"
echo "$cache/helm-$helm_version/bin"
echo "$cache/$kstatus_key/bin"
echo "$cache/kcm-$kcm_version/bin"
