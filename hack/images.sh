#!/usr/bin/env bash
# glowplug's images, built without a daemon or a registry, from the project's own Dockerfiles.
#   images.sh build        the pause, base, operator, prefetch and worker images (buildah, chroot
#                          isolation)
#   images.sh load SOCKET  import them into the real node's containerd (skips what it already has)
#   images.sh sizes        one line per image: name and size
# buildah's storage (and its layer cache) is kept in $GLOWPLUG_CACHE/buildah, so a second build
# with only source changes rebuilds only the top layer of each image.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=versions.env
source "$root/hack/versions.env"
cache=${GLOWPLUG_CACHE:-$HOME/.cache/glowplug}
store=$cache/buildah
archives=$cache/images
buildah=(buildah --root "$store/storage" --runroot "$store/run" --storage-driver overlay)

# Tagged as the chart's defaults (appVersion), so that `helm install` with no overrides finds them.
APP_VERSION=$(sed -n 's/^appVersion: *"\(.*\)"/\1/p' "$root/charts/glowplug/Chart.yaml")
OPERATOR_IMAGE=ghcr.io/glowplug/operator:$APP_VERSION
WORKER_IMAGE=ghcr.io/glowplug/worker:$APP_VERSION
PREFETCH_IMAGE=ghcr.io/glowplug/prefetch:$APP_VERSION
PAUSE_IMAGE=localhost/glowplug/pause:$PAUSE_VERSION
BASE_IMAGE=localhost/glowplug/debian-python:$BASE_SUITE
BUSYBOX_IMAGE=localhost/glowplug/busybox:$(cut -d: -f2 <<<"${BUSYBOX_DEB_VERSION%%-*}")
# What the pods on the real node use; the base is only a build input.
NODE_IMAGES=("$PAUSE_IMAGE" "$BUSYBOX_IMAGE" "$OPERATOR_IMAGE" "$PREFETCH_IMAGE" "$WORKER_IMAGE")

log() { printf '[images] %s\n' "$*" >&2; }

exists() { "${buildah[@]}" inspect --type image "$1" >/dev/null 2>&1; }

# from_scratch TAG SOURCE [buildah config option ...]: an image of SOURCE alone (a directory, or a
# tar that `buildah add` unpacks).
from_scratch() {
  local tag=$1 source=$2 c
  shift 2
  c=$("${buildah[@]}" from scratch)
  "${buildah[@]}" add "$c" "$source" / >/dev/null
  "${buildah[@]}" config "$@" "$c"
  "${buildah[@]}" commit --quiet --format oci "$c" "$tag" >/dev/null
  "${buildah[@]}" rm "$c" >/dev/null
}

build_pause() {
  exists "$PAUSE_IMAGE" && return
  log "building $PAUSE_IMAGE (static pause.c)"
  local work
  work=$(mktemp -d)
  mkdir "$work/root"
  gcc -static -O2 -s -o "$work/root/pause" "$root/hack/node/pause.c"
  from_scratch "$PAUSE_IMAGE" "$work/root" --entrypoint '["/pause"]' --user 65535:65535
  rm -rf "$work"
}

# Debian's static busybox: a shell and coreutils for the local-path provisioner's helper pods.
build_busybox() {
  exists "$BUSYBOX_IMAGE" && return
  log "building $BUSYBOX_IMAGE (busybox-static)"
  local work tool
  work=$(mktemp -d)
  mkdir -p "$work/bin"
  cp /bin/busybox "$work/bin/busybox"
  for tool in sh mkdir rm chmod ls cat; do ln -s busybox "$work/bin/$tool"; done
  from_scratch "$BUSYBOX_IMAGE" "$work" --cmd '["/bin/sh"]'
  rm -rf "$work"
}

# A Debian base with Python, made from Debian's packages (the Dockerfiles' public default,
# python:3.11-slim, cannot be pulled here).
build_base() {
  exists "$BASE_IMAGE" && return
  log "building $BASE_IMAGE (mmdebstrap $BASE_SUITE: $BASE_PACKAGES)"
  local work
  work=$(mktemp -d)
  mmdebstrap --quiet --variant=minbase --include="$BASE_PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/{doc,man,locale}/*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$BASE_SUITE" "$work/rootfs.tar"
  from_scratch "$BASE_IMAGE" "$work/rootfs.tar" \
    --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd '["python3"]'
  rm -rf "$work"
}

# The host's CA bundle stands in for the image's during the build: package registries may be
# reached through a TLS-inspecting proxy that only the host trusts.
HOST_CA_BUNDLE=${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}

build_app() {  # build_app DOCKERFILE[:TARGET] TAG [BUILD-ARG ...]
  local dockerfile=${1%%:*} tag=$2 arg args=()
  [[ $1 == *:* ]] && args+=(--target "${1#*:}")
  shift 2
  for arg in "BASE_IMAGE=$BASE_IMAGE" "UV_VERSION=$UV_VERSION" "$@"; do args+=(--build-arg "$arg"); done
  log "building $tag from $dockerfile"
  "${buildah[@]}" bud --quiet --isolation chroot --layers --format oci \
    --volume "$HOST_CA_BUNDLE:/etc/ssl/certs/ca-certificates.crt:ro" \
    "${args[@]}" -f "$root/$dockerfile" -t "$tag" "$root" >/dev/null
}

build() {
  mkdir -p "$store"
  build_pause
  build_busybox
  build_base
  build_app operator/Dockerfile "$OPERATOR_IMAGE"
  build_app worker/Dockerfile:prefetch "$PREFETCH_IMAGE"
  build_app worker/Dockerfile "$WORKER_IMAGE"
  # Layers no tag points at any more (earlier source versions) are dropped.
  "${buildah[@]}" rmi --prune >/dev/null 2>&1 || true
  sizes
}

sizes() {
  local image
  for image in "$BASE_IMAGE" "${NODE_IMAGES[@]}"; do
    "${buildah[@]}" images --format '{{.Name}}:{{.Tag}} {{.Size}}' "$image" 2>/dev/null || true
  done
}

# Import into containerd what it does not have yet: images travel as uncompressed OCI archives
# (compressing multi-GB layers only to unpack them again costs minutes), and are pinned.
load() {  # load SOCKET [IMAGE ...]: by default the node's images
  local socket=$1 image id name
  shift
  local images=("${NODE_IMAGES[@]}")
  if (($#)); then images=("$@"); fi
  local ctr=("$cache/bin/containerd-$CONTAINERD_VERSION/ctr" --address "$socket" -n k8s.io)
  mkdir -p "$archives"
  for image in "${images[@]}"; do
    id=$("${buildah[@]}" inspect --type image --format '{{.FromImageID}}' "$image")
    name=${image//[\/:]/_}
    if "${ctr[@]}" images ls "name==$image" 2>/dev/null | grep -q "glowplug.dev/id=$id"; then
      continue
    fi
    log "importing $image into the node's containerd"
    rm -f "$archives/$name.tar"
    "${buildah[@]}" push --quiet --disable-compression "$image" "oci-archive:$archives/$name.tar:$image"
    # (ctr's stderr also carries containerd's cgroup v1 deprecation notice: shown on failure only.)
    "${ctr[@]}" images import --snapshotter overlayfs "$archives/$name.tar" >/dev/null 2>"$archives/$name.err" \
      || { cat "$archives/$name.err" >&2; exit 1; }
    # Pinned: nothing can pull them again, so the kubelet's image GC must not remove them.
    "${ctr[@]}" images label "$image" "glowplug.dev/id=$id" io.cri-containerd.pinned=pinned \
      >/dev/null 2>&1
    rm -f "$archives/$name.tar" "$archives/$name.err"
  done
}

case ${1:-} in
  build) build ;;
  load) load "${2:?usage: $0 load CONTAINERD_SOCKET}" ;;
  sizes) sizes ;;
  *) echo "usage: $0 build|load SOCKET|sizes" >&2; exit 2 ;;
esac
