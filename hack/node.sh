#!/usr/bin/env bash
# The local cluster's real node: containerd + runc + CNI bridge, kubelet and kube-proxy (iptables),
# beside kwok's simulated GPU nodes. Driven by cluster.sh; state under $dir/node.
#   node.sh bridge   create the pod bridge (the API server listens on its address, so it comes first)
#   node.sh up       start containerd, load glowplug's images, start kubelet, kube-proxy and the
#                    local-path provisioner (claims of the `local-path` StorageClass)
#   node.sh down     stop them and undo every change made to the host (mounts, links, iptables
#                    chains, sysctls, cgroups, paths); `node.sh leftovers` lists what is still there
# The node is labelled and tainted `glowplug.dev/real-node`: only pods that tolerate the taint run
# there, so kwok's simulated nodes keep the rest.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=versions.env
source "$root/hack/versions.env"
cache=${GLOWPLUG_CACHE:-$HOME/.cache/glowplug}
dir=${GLOWPLUG_CLUSTER_DIR:-$root/.cluster}
node=$dir/node
k8s_bin=$cache/bin/kubernetes-$KUBERNETES_VERSION
containerd_bin=$cache/bin/containerd-$CONTAINERD_VERSION
provisioner_bin=$cache/bin/local-path-provisioner-$LOCAL_PATH_PROVISIONER_VERSION/local-path-provisioner
kubectl="$k8s_bin/kubectl --kubeconfig=$dir/kubeconfig"

NODE_NAME=glowplug-real
BRIDGE=glowplug0
NODE_IP=10.88.0.1
POD_CIDR=10.88.0.0/16
SERVICE_CIDR=10.96.0.0/16
TAINT=glowplug.dev/real-node
# Images live outside the cluster dir, so that a new cluster does not import them again.
CONTAINERD_ROOT=$cache/containerd
SOCKET=$node/containerd.sock
# Host settings that kubelet (kernel defaults), the bridge plugin (ip_forward) or kube-proxy may
# change: recorded at `up`, put back at `down`.
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops
  kernel.keys.root_maxkeys kernel.keys.root_maxbytes net.ipv4.ip_forward
  net.ipv4.conf.all.route_localnet net.bridge.bridge-nf-call-iptables)
# Paths kubelet and containerd create outside their configured directories.
HOST_PATHS=(/var/log/containers /var/lib/kubelet /run/containerd /var/lib/cni /etc/cni/net.d/cni.lock)

log() { printf '[node] %s\n' "$*" >&2; }

start() {  # start NAME CMD...: detached, in its own session; logs in $dir/logs/NAME.log
  local name=$1
  shift
  setsid "$@" >"$dir/logs/$name.log" 2>&1 </dev/null &
  echo $! >"$dir/pids/$name"
}

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { log "timed out waiting for $what; logs in $dir/logs"; return 1; }
    sleep 0.2
  done
}

bridge() {
  if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
    ip link add "$BRIDGE" type bridge
    ip addr add "$NODE_IP/16" dev "$BRIDGE"
    ip link set "$BRIDGE" up
  fi
  # Service addresses route onto the bridge, not the host's default route: kube-proxy rewrites
  # them to pod addresses, and one it has not programmed yet (a new Service) finds no host there
  # instead of leaving the machine. The route goes with the link at `down`.
  ip route replace "$SERVICE_CIDR" dev "$BRIDGE"
}

record_host_state() {
  mkdir -p "$node"
  [[ -f $node/sysctls ]] && return
  local key
  for key in "${SYSCTLS[@]}"; do
    sysctl -n "$key" >/dev/null 2>&1 && printf '%s=%s\n' "$key" "$(sysctl -n "$key")"
  done >"$node/sysctls"
  for key in "${HOST_PATHS[@]}"; do
    [[ -e $key ]] || echo "$key"
  done >"$node/new-paths"
}

certs() {
  local pki=$dir/pki
  # cert NAME SUBJECT EXTENSIONS
  cert() {
    [[ -f $pki/$1.crt ]] && return
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
    printf '%s\n' "$3" >"$pki/$1.ext"
    openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
      -days 3650 -extfile "$pki/$1.ext" -out "$pki/$1.crt" 2>/dev/null
  }
  cert kubelet "/O=system:nodes/CN=system:node:$NODE_NAME" 'extendedKeyUsage=clientAuth'
  cert kubelet-serving "/CN=$NODE_NAME" \
    "subjectAltName=IP:$NODE_IP,DNS:$NODE_NAME"$'\n''extendedKeyUsage=serverAuth'
  cert kube-proxy "/CN=system:kube-proxy" 'extendedKeyUsage=clientAuth'
  local server
  server="https://$(sed -n 's/^APISERVER_HOST=//p' "$dir/ports"):$(sed -n 's/^APISERVER_PORT=//p' "$dir/ports")"
  for who in kubelet kube-proxy; do
    cat >"$dir/$who.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: glowplug-local
  cluster: {server: "$server", certificate-authority: $pki/ca.crt}
users:
- name: $who
  user: {client-certificate: $pki/$who.crt, client-key: $pki/$who.key}
contexts:
- name: glowplug-local
  context: {cluster: glowplug-local, user: $who}
current-context: glowplug-local
EOF
  done
}

start_containerd() {
  mkdir -p "$node/cni/net.d" "$node/cni/ipam" "$node/runc" "$CONTAINERD_ROOT"
  cat >"$node/cni/net.d/10-glowplug.conflist" <<EOF
{
  "cniVersion": "1.0.0",
  "name": "glowplug",
  "plugins": [
    {"type": "bridge", "bridge": "$BRIDGE", "isGateway": true, "ipMasq": false, "hairpinMode": true,
     "ipam": {"type": "host-local", "dataDir": "$node/cni/ipam",
              "ranges": [[{"subnet": "$POD_CIDR", "gateway": "$NODE_IP"}]],
              "routes": [{"dst": "$SERVICE_CIDR"}]}},
    {"type": "portmap", "capabilities": {"portMappings": true}},
    {"type": "loopback"}
  ]
}
EOF
  # containerd 2.4's config layout (version 4): the sockets are set on the server plugins.
  cat >"$node/containerd.toml" <<EOF
version = 4
root = "$CONTAINERD_ROOT"
state = "$node/containerd-state"
imports = []

[plugins.'io.containerd.server.v1.grpc']
  address = "$SOCKET"
[plugins.'io.containerd.server.v1.ttrpc']
  address = "$SOCKET.ttrpc"
[plugins.'io.containerd.nri.v1.nri']
  disable = true
[plugins.'io.containerd.grpc.v1.cri']
  disable_tcp_service = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
[plugins.'io.containerd.cri.v1.images']
  snapshotter = "overlayfs"
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = "localhost/glowplug/pause:$PAUSE_VERSION"
[plugins.'io.containerd.cri.v1.runtime']
  # root here lacks CAP_SYS_RESOURCE: runc cannot lower a process's OOM score below containerd's.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = "runc"
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = "$(command -v runc)"
        Root = "$node/runc"
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ["/usr/lib/cni"]
    conf_dir = "$node/cni/net.d"
    max_conf_num = 1
EOF
  PATH=$containerd_bin:$PATH start containerd "$containerd_bin/containerd" --config "$node/containerd.toml"
  wait_for 30 containerd "$containerd_bin/ctr" --address "$SOCKET" version
}

start_kubelet() {
  local port
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  mkdir -p "$node/kubelet" "$node/pod-logs" "$node/volume-plugins"
  cat >"$node/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# This machine has cgroup v1 only; Kubernetes 1.35+ refuses it unless told otherwise.
failCgroupV1: false
failSwapOn: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://$SOCKET
address: $NODE_IP
port: $port
readOnlyPort: 0
healthzPort: 0
tlsCertFile: $dir/pki/kubelet-serving.crt
tlsPrivateKeyFile: $dir/pki/kubelet-serving.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $dir/pki/ca.crt}
authorization: {mode: Webhook}
clusterDNS: []
resolvConf: ""
podLogsDir: $node/pod-logs
volumePluginDir: $node/volume-plugins
serializeImagePulls: false
# A shared disk: no eviction unless it is nearly full (image imports need several GB for a while),
# and a pressure taint that lifts 10 s after the pressure does.
evictionHard: {memory.available: 100Mi, nodefs.available: 1Gi, imagefs.available: 1Gi, nodefs.inodesFree: 1%}
evictionPressureTransitionPeriod: 10s
imageGCHighThresholdPercent: 95
imageGCLowThresholdPercent: 90
registerWithTaints:
- {key: $TAINT, value: "true", effect: NoSchedule}
EOF
  start kubelet "$k8s_bin/kubelet" --config "$node/kubelet.yaml" --kubeconfig "$dir/kubelet.kubeconfig" \
    --root-dir "$node/kubelet" --cert-dir "$node/kubelet/pki" --hostname-override "$NODE_NAME" \
    --node-ip "$NODE_IP" --node-labels "$TAINT=true"
}

start_kube_proxy() {
  local healthz metrics
  healthz=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  metrics=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"$node/kube-proxy.yaml" <<EOF
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection: {kubeconfig: $dir/kube-proxy.kubeconfig}
mode: iptables
hostnameOverride: $NODE_NAME
clusterCIDR: $POD_CIDR
healthzBindAddress: 127.0.0.1:$healthz
metricsBindAddress: 127.0.0.1:$metrics
# Leave the host's conntrack and route_localnet settings alone.
conntrack: {maxPerCore: 0, tcpEstablishedTimeout: 0s, tcpCloseWaitTimeout: 0s}
iptables: {localhostNodePorts: false}
EOF
  start kube-proxy "$k8s_bin/kube-proxy" --config "$node/kube-proxy.yaml"
}

# Claims of the `local-path` StorageClass become directories under $node/local-path.
start_provisioner() {
  mkdir -p "$node/local-path"
  $kubectl apply -f "$root/hack/storage/local-path.yaml" >/dev/null
  printf '{"nodePathMap": [{"node": "%s", "paths": ["%s"]}]}\n' "$NODE_NAME" "$node/local-path" \
    >"$node/local-path.json"
  cat >"$node/local-path-helper.yaml" <<YAML
apiVersion: v1
kind: Pod
metadata: {name: helper-pod}
spec:
  containers:
  - name: helper-pod
    image: localhost/glowplug/busybox:$(cut -d: -f2 <<<"${BUSYBOX_DEB_VERSION%%-*}")
    imagePullPolicy: IfNotPresent
YAML
  start local-path-provisioner "$provisioner_bin" start --kubeconfig "$dir/kubeconfig" \
    --config "$node/local-path.json" --helper-pod-file "$node/local-path-helper.yaml" \
    --namespace local-path-storage --service-account-name local-path-provisioner \
    --configmap-name local-path-config --provisioner-name rancher.io/local-path
}

node_ready() {
  [[ $($kubectl get node "$NODE_NAME" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}') == True ]]
}

up() {
  for b in "$k8s_bin/kubelet" "$k8s_bin/kube-proxy" "$containerd_bin/containerd" "$provisioner_bin" \
    "$(command -v runc)" /usr/lib/cni/bridge; do
    [[ -x $b ]] || { log "missing $b: run 'make binaries'"; exit 1; }
  done
  record_host_state
  bridge
  certs
  start_containerd
  "$root/hack/images.sh" load "$SOCKET"
  start_kubelet
  start_kube_proxy
  wait_for 90 "the real node $NODE_NAME to be Ready" node_ready
  start_provisioner
  log "real node $NODE_NAME Ready ($NODE_IP, containerd $CONTAINERD_VERSION)"
}

stop_pid() {  # stop_pid NAME: TERM its process group, KILL it after 10 s
  local f=$dir/pids/$1 pid
  [[ -f $f ]] || return 0
  pid=$(cat "$f")
  kill -TERM -- "-$pid" 2>/dev/null || true
  for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL -- "-$pid" 2>/dev/null || true
  rm -f "$f"
}

remove_containers() {  # every task, container and sandbox of the node's containerd
  local ctr=("$containerd_bin/ctr" --address "$SOCKET" -n k8s.io) id
  "${ctr[@]}" version >/dev/null 2>&1 || return 0
  for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do
    "${ctr[@]}" tasks kill -s SIGKILL "$id" >/dev/null 2>&1 || true
  done
  for _ in $(seq 50); do
    [[ -z $("${ctr[@]}" tasks ls -q 2>/dev/null) ]] && break
    sleep 0.1
  done
  for id in $("${ctr[@]}" tasks ls -q 2>/dev/null); do "${ctr[@]}" tasks rm -f "$id" >/dev/null 2>&1 || true; done
  for id in $("${ctr[@]}" containers ls -q 2>/dev/null); do "${ctr[@]}" containers rm "$id" >/dev/null 2>&1 || true; done
  for id in $("${ctr[@]}" sandboxes ls -q 2>/dev/null); do "${ctr[@]}" sandboxes rm -f "$id" >/dev/null 2>&1 || true; done
}

our_mounts() {  # mount points under the node's directories, deepest first
  awk '{print $2}' /proc/self/mounts | { grep -E "^($node|$CONTAINERD_ROOT|/run/containerd)(/|$)" || true; } \
    | awk '{print length, $0}' | sort -rn | cut -d' ' -f2-
}

remove_iptables() {  # every KUBE-* and CNI-* chain, and the jumps to them, in both families
  local tool table
  for tool in iptables ip6tables iptables-legacy ip6tables-legacy; do
    command -v "$tool" >/dev/null 2>&1 || continue
    for table in filter nat mangle raw; do
      { "$tool-save" -t "$table" 2>/dev/null || true; } | { grep -E '^-A [A-Z]+ .*-j (KUBE|CNI)-' || true; } \
        | sed 's/^-A/-D/' | while read -r rule; do
          eval "$tool -w -t $table $rule" 2>/dev/null || true
        done
      for chain in $("$tool-save" -t "$table" 2>/dev/null | sed -n 's/^:\(\(KUBE\|CNI\)-[^ ]*\).*/\1/p'); do
        "$tool" -w -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$tool-save" -t "$table" 2>/dev/null | sed -n 's/^:\(\(KUBE\|CNI\)-[^ ]*\).*/\1/p'); do
        "$tool" -w -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

remove_cgroups() {
  local hierarchy
  for hierarchy in /sys/fs/cgroup/*/; do
    for top in kubepods k8s.io; do
      [[ -d $hierarchy$top ]] || continue
      find "$hierarchy$top" -depth -type d -exec rmdir {} + 2>/dev/null || true
    done
  done
}

down() {
  [[ -d $node ]] || return 0
  # Pods first, while kubelet and containerd can still stop them cleanly.
  if [[ -f $dir/pids/kubelet ]] && $kubectl get node "$NODE_NAME" >/dev/null 2>&1; then
    $kubectl delete pods -A --field-selector "spec.nodeName=$NODE_NAME" --grace-period=1 \
      --wait=false >/dev/null 2>&1 || true
    wait_for 30 "the node's pods to stop" \
      bash -c "[[ -z \$($kubectl get pods -A --field-selector spec.nodeName=$NODE_NAME -o name 2>/dev/null) ]]" || true
  fi
  stop_pid local-path-provisioner
  stop_pid kube-proxy
  "$k8s_bin/kube-proxy" --cleanup >/dev/null 2>&1 || true
  stop_pid kubelet
  remove_containers
  stop_pid containerd
  pkill -f "containerd-shim-runc-v2 .*-address $SOCKET" 2>/dev/null || true
  local m
  for m in $(our_mounts); do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; done
  ip link del "$BRIDGE" 2>/dev/null || true
  # Veth ends left by sandboxes that went with the network namespaces.
  remove_iptables
  remove_cgroups
  if [[ -f $node/sysctls ]]; then
    while IFS== read -r key value; do
      [[ $(sysctl -n "$key" 2>/dev/null) == "$value" ]] || sysctl -q -w "$key=$value" >/dev/null || true
    done <"$node/sysctls"
  fi
  if [[ -f $node/new-paths ]]; then xargs -r rm -rf <"$node/new-paths"; fi
  rm -rf "$node"
  log "real node stopped, host restored"
}

# What would show that `down` missed something: prints nothing on a clean host.
leftovers() {
  local m
  for m in $(our_mounts); do echo "mount $m"; done
  ip link show "$BRIDGE" >/dev/null 2>&1 && echo "link $BRIDGE"
  ip route show "$SERVICE_CIDR" | sed 's/^/route /'
  ip -o link show type veth 2>/dev/null | awk -F': ' '{print "veth " $2}'
  for tool in iptables ip6tables; do
    for table in filter nat mangle; do
      "$tool-save" -t "$table" 2>/dev/null | grep -E '^:(KUBE|CNI)-' | sed "s/^:/$tool $table chain /;s/ .*//" || true
    done
  done
  for hierarchy in /sys/fs/cgroup/*/; do
    for top in kubepods k8s.io; do [[ -d $hierarchy$top ]] && echo "cgroup $hierarchy$top"; done
  done
  pgrep -a -f "$k8s_bin/(kubelet|kube-proxy)|$containerd_bin/containerd|$provisioner_bin" || true
  [[ -d $node ]] && echo "dir $node"
  return 0
}

case ${1:-} in
  bridge) record_host_state; bridge ;;
  up) up ;;
  down) down ;;
  leftovers) leftovers ;;
  socket) echo "$SOCKET" ;;
  *) echo "usage: $0 bridge|up|down|leftovers|socket" >&2; exit 2 ;;
esac
