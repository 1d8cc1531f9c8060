#!/usr/bin/env bash
# Builds the local cluster's binaries from the Go module proxy, once per machine: the control plane,
# the real node's kubelet, kube-proxy and containerd, its claims' provisioner, kwok and helm.
# Output: $GLOWPLUG_CACHE/bin/<tool>-<version>/<binary>; a tool whose directory is complete is skipped.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${GLOWPLUG_CACHE:-$HOME/.cache/glowplug}
export CGO_ENABLED=0 GOFLAGS=-buildvcs=false GOTOOLCHAIN=local
mkdir -p "$cache/bin"

log() { printf '[build-control-plane] %s\n' "$*" >&2; }

build_kubernetes() {
  local out="$cache/bin/kubernetes-$KUBERNETES_VERSION"
  [[ -f "$out/.complete" ]] && { log "kubernetes $KUBERNETES_VERSION cached"; return; }
  local staging=${KUBERNETES_VERSION/v1./v0.}
  local mod
  mod=$(mktemp -d)
  log "building kubernetes $KUBERNETES_VERSION (staging modules $staging) in $mod"
  (
    cd "$mod"
    go mod init glowplug.dev/controlplane >/dev/null 2>&1
    # k8s.io/kubernetes points its staging modules at local paths; use their published versions.
    curl -fsSL "$(go env GOPROXY | cut -d, -f1)/k8s.io/kubernetes/@v/$KUBERNETES_VERSION.mod" \
      | sed -n 's#^\t\(k8s.io/[a-z0-9-]*\) => ./staging/.*#\1#p' \
      | while read -r m; do go mod edit -replace "$m=$m@$staging"; done
    go mod edit -require "k8s.io/kubernetes@$KUBERNETES_VERSION"
    cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
	_ "k8s.io/kubernetes/cmd/kubelet"
	_ "k8s.io/kubernetes/cmd/kube-proxy"
)
GO
    go mod tidy -e >/dev/null 2>&1 || true
    go get "k8s.io/kubernetes@$KUBERNETES_VERSION" >/dev/null
    local ldflags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1"
      ldflags+=" -X $pkg.gitMinor=$(cut -d. -f2 <<<"$KUBERNETES_VERSION") -X $pkg.gitTreeState=clean"
    done
    mkdir -p "$out"
    for cmd in kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy; do
      log "  go build $cmd"
      go build -trimpath -ldflags "$ldflags" -o "$out/$cmd" "k8s.io/kubernetes/cmd/$cmd"
    done
  )
  rm -rf "$mod"
  touch "$out/.complete"
}

build_etcd() {
  local out="$cache/bin/etcd-$ETCD_VERSION"
  [[ -f "$out/.complete" ]] && { log "etcd $ETCD_VERSION cached"; return; }
  local mod
  mod=$(mktemp -d)
  log "building etcd $ETCD_VERSION in $mod"
  (
    cd "$mod"
    go mod init glowplug.dev/etcd >/dev/null 2>&1
    # etcd's server module replaces its siblings with local paths; pin them to the same release.
    for m in api/v3 client/pkg/v3 client/v3 pkg/v3 server/v3; do
      go mod edit -replace "go.etcd.io/etcd/$m=go.etcd.io/etcd/$m@$ETCD_VERSION"
    done
    go mod edit -require "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
    printf '//go:build tools\n\npackage tools\n\nimport _ "go.etcd.io/etcd/server/v3"\n' > tools.go
    go mod tidy -e >/dev/null 2>&1 || true
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null
    mkdir -p "$out"
    go build -trimpath -ldflags "-s -w" -o "$out/etcd" go.etcd.io/etcd/server/v3
  )
  rm -rf "$mod"
  touch "$out/.complete"
}

go_install() {  # name version package binary
  local out="$cache/bin/$1-$2"
  [[ -f "$out/.complete" ]] && { log "$1 $2 cached"; return; }
  log "installing $3@$2"
  mkdir -p "$out"
  GOBIN="$out" go install -trimpath -ldflags "-s -w" "$3@$2"
  touch "$out/.complete"
}

build_containerd() {
  local out="$cache/bin/containerd-$CONTAINERD_VERSION"
  [[ -f "$out/.complete" ]] && { log "containerd $CONTAINERD_VERSION cached"; return; }
  log "installing containerd $CONTAINERD_VERSION (containerd, ctr, containerd-shim-runc-v2)"
  mkdir -p "$out"
  local pkg=github.com/containerd/containerd/v2/cmd
  GOBIN="$out" go install -trimpath -tags "no_btrfs no_devmapper no_zfs" \
    -ldflags "-s -w -X github.com/containerd/containerd/v2/version.Version=$CONTAINERD_VERSION" \
    "$pkg/containerd@$CONTAINERD_VERSION" "$pkg/ctr@$CONTAINERD_VERSION" \
    "$pkg/containerd-shim-runc-v2@$CONTAINERD_VERSION"
  touch "$out/.complete"
}

build_etcd
build_containerd
go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok
go_install local-path-provisioner "$LOCAL_PATH_PROVISIONER_VERSION" github.com/rancher/local-path-provisioner
go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm
build_kubernetes

log "binaries in $cache/bin"
