#!/usr/bin/env bash
# Debian packages the local cluster, the image build and the tests need, installed once per machine
# (root; apt). The real node's runtime pieces are pinned in versions.env.
#   nginx, jq             the tests' HTTP weight source; kwok Stage expressions
#   runc, CNI plugins     the real node's OCI runtime and pod network (bridge, host-local, portmap)
#   iptables              kube-proxy and kubelet rules
#   buildah, mmdebstrap   daemonless image builds and the Debian base image
#   gcc, libc6-dev        the static pause binary
#   busybox-static        the local-path provisioner's helper image
set -euo pipefail
# shellcheck source=versions.env
source "$(dirname "$0")/versions.env"
want=(
  nginx jq iptables gcc libc6-dev
  "runc=$RUNC_DEB_VERSION"
  "containernetworking-plugins=$CNI_PLUGINS_DEB_VERSION"
  "buildah=$BUILDAH_DEB_VERSION"
  "mmdebstrap=$MMDEBSTRAP_DEB_VERSION"
  "busybox-static=$BUSYBOX_DEB_VERSION"
)
need=()
for spec in "${want[@]}"; do
  name=${spec%%=*} version=${spec#*=}
  have=$(dpkg-query -W -f='${Status} ${Version}' "$name" 2>/dev/null || true)
  if [[ $have != "install ok installed"* ]] || { [[ $spec == *=* ]] && [[ $have != *" $version" ]]; }; then
    need+=("$spec")
  fi
done
((${#need[@]})) || exit 0
echo "[install-packages] apt-get install ${need[*]}" >&2
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
