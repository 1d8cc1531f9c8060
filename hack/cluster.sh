#!/usr/bin/env bash
# The local cluster: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kwok (simulated
# GPU nodes) and one real node (hack/node.sh: containerd, kubelet, kube-proxy), state under .cluster/.
#   cluster.sh up      start it, or reuse a healthy one
#   cluster.sh down    stop every process it started, remove its state, undo its host changes
#   cluster.sh status  exit 0 when it is up and healthy
#   cluster.sh leftovers  what `down` should have undone on the host (nothing when clean)
# GLOWPLUG_CLUSTER_DIR puts a second, independent cluster elsewhere (benchmarks do);
# GLOWPLUG_REAL_NODE=0 leaves the real node out (a second cluster must: there is one pod bridge).
# With the real node the API server listens on the node's bridge address (pods reach it there,
# through the `kubernetes` Service); without it, on 127.0.0.1.
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=versions.env
source "$root/hack/versions.env"
cache=${GLOWPLUG_CACHE:-$HOME/.cache/glowplug}
dir=${GLOWPLUG_CLUSTER_DIR:-$root/.cluster}
kubeconfig=$dir/kubeconfig
k8s_bin=$cache/bin/kubernetes-$KUBERNETES_VERSION
etcd_bin=$cache/bin/etcd-$ETCD_VERSION/etcd
kwok_bin=$cache/bin/kwok-$KWOK_VERSION/kwok
kubectl="$k8s_bin/kubectl --kubeconfig=$kubeconfig"
real_node=${GLOWPLUG_REAL_NODE:-1}
# The real node's bridge address (hack/node.sh NODE_IP).
NODE_IP=10.88.0.1
# kwok gives its simulated pods addresses from here. Nothing answers on them, and without a route
# of their own a connection to one (the operator reads each Ready pod's /startup) would leave the
# machine through the default route: `up` makes them unreachable on this host, `down` undoes it.
KWOK_POD_CIDR=10.244.0.0/16
if [[ $real_node == 1 ]]; then APISERVER_HOST=$NODE_IP; else APISERVER_HOST=127.0.0.1; fi

log() { printf '[cluster] %s\n' "$*" >&2; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start NAME CMD...: run detached in its own session, log to .cluster/logs/NAME.log.
start() {
  local name=$1
  shift
  setsid "$@" >"$dir/logs/$name.log" 2>&1 < /dev/null &
  echo $! >"$dir/pids/$name"
}

alive() {  # every recorded process still runs
  local f
  for f in "$dir"/pids/*; do
    [[ -e $f ]] || return 1
    kill -0 "$(cat "$f")" 2>/dev/null || return 1
  done
}

kwok_ready() {
  [[ $($kubectl get nodes -l type=kwok --no-headers 2>/dev/null | grep -c ' Ready ') -ge 2 ]]
}

healthy() {
  [[ -f $kubeconfig ]] && alive && $kubectl get --raw /readyz >/dev/null 2>&1 && kwok_ready \
    && { [[ $real_node != 1 ]] || $kubectl get nodes -l glowplug.dev/real-node --no-headers 2>/dev/null | grep -q ' Ready '; }
}

untainted() {  # the node lifecycle controller has lifted the not-ready taint
  [[ -z $($kubectl get nodes -l type=kwok -o jsonpath='{.items[*].spec.taints}') ]]
}

guard_kwok_pods() {  # connections to kwok's pod addresses fail at once, on this host
  if ip route replace unreachable "$KWOK_POD_CIDR" 2>/dev/null; then return; fi
  if [[ ${CI:-} == true ]]; then
    log "cannot add the route 'unreachable $KWOK_POD_CIDR' (needs root): kwok's pod addresses would route off this machine"
    exit 1
  fi
  log "warning: no route 'unreachable $KWOK_POD_CIDR' (needs root): connections to simulated pods use the default route"
}

kwok_runs() {  # some local cluster's kwok (this one's or a benchmark's) hands out those addresses
  pgrep -f -- "--cidr $KWOK_POD_CIDR" >/dev/null
}

unguard_kwok_pods() {  # only when no kwok hands out those addresses any more
  kwok_runs && return
  ip route del unreachable "$KWOK_POD_CIDR" 2>/dev/null || true
}

wait_for() {  # wait_for SECONDS DESCRIPTION CMD...
  local deadline=$((SECONDS + $1)) what=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      log "timed out waiting for $what; logs in $dir/logs"
      return 1
    fi
    sleep 0.2
  done
}

make_pki() {
  local pki=$dir/pki
  mkdir -p "$pki"
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=glowplug-local-ca" \
    -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
  # cert NAME SUBJECT [SAN]
  cert() {
    openssl req -newkey rsa:2048 -nodes -subj "$2" -keyout "$pki/$1.key" -out "$pki/$1.csr" 2>/dev/null
    local ext=$pki/$1.ext
    if [[ -n ${3:-} ]]; then
      printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$3" >"$ext"
    else
      printf 'extendedKeyUsage=clientAuth\n' >"$ext"
    fi
    openssl x509 -req -in "$pki/$1.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" -CAcreateserial \
      -days 3650 -extfile "$ext" -out "$pki/$1.crt" 2>/dev/null
  }
  cert apiserver "/CN=kube-apiserver" \
    "IP:127.0.0.1,IP:$NODE_IP,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  cert admin "/O=system:masters/CN=glowplug-admin"
  cert controller-manager "/CN=system:kube-controller-manager"
  cert scheduler "/CN=system:kube-scheduler"
  openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
  openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

write_kubeconfig() {  # write_kubeconfig FILE CERT_NAME
  local pki=$dir/pki
  cat >"$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: glowplug-local
  cluster:
    server: https://$APISERVER_HOST:$APISERVER_PORT
    certificate-authority: $pki/ca.crt
users:
- name: $2
  user:
    client-certificate: $pki/$2.crt
    client-key: $pki/$2.key
contexts:
- name: glowplug-local
  context: {cluster: glowplug-local, user: $2}
current-context: glowplug-local
EOF
}

up() {
  if healthy; then
    log "reusing the healthy cluster in $dir"
    guard_kwok_pods
    # Images rebuilt since (make images) reach the real node; unchanged ones are skipped.
    if [[ $real_node == 1 ]]; then "$root/hack/images.sh" load "$dir/node/containerd.sock"; fi
    print_env
    return
  fi
  [[ -d $dir/pids ]] && down
  for b in "$k8s_bin/kube-apiserver" "$etcd_bin" "$kwok_bin"; do
    [[ -x $b ]] || { log "missing $b: run 'make binaries' (hack/build-control-plane.sh) first"; exit 1; }
  done
  mkdir -p "$dir/logs" "$dir/pids" "$dir/etcd"
  make_pki
  if [[ $real_node == 1 ]]; then "$root/hack/node.sh" bridge; fi
  local etcd_port etcd_peer kcm_port sched_port kwok_port
  etcd_port=$(free_port) etcd_peer=$(free_port) APISERVER_PORT=$(free_port)
  kcm_port=$(free_port) sched_port=$(free_port) kwok_port=$(free_port)
  printf 'APISERVER_HOST=%s\nAPISERVER_PORT=%s\n' "$APISERVER_HOST" "$APISERVER_PORT" >"$dir/ports"
  local pki=$dir/pki

  start etcd "$etcd_bin" --name local --data-dir "$dir/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "local=http://127.0.0.1:$etcd_peer" --unsafe-no-fsync --quota-backend-bytes 4294967296
  wait_for 30 etcd curl -fsS "http://127.0.0.1:$etcd_port/health"

  start kube-apiserver "$k8s_bin/kube-apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address "$APISERVER_HOST" --advertise-address "$APISERVER_HOST" --secure-port "$APISERVER_PORT" \
    --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
    --client-ca-file "$pki/ca.crt" \
    --kubelet-preferred-address-types InternalIP,Hostname \
    --kubelet-certificate-authority "$pki/ca.crt" \
    --kubelet-client-certificate "$pki/admin.crt" --kubelet-client-key "$pki/admin.key" \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --authorization-mode Node,RBAC \
    --enable-admission-plugins NamespaceLifecycle,ServiceAccount,PodSecurity,LimitRanger,ResourceQuota,DefaultStorageClass \
    --allow-privileged=true \
    --max-requests-inflight 0 --max-mutating-requests-inflight 0 --enable-priority-and-fairness=false \
    --watch-cache=true --event-ttl 2h
  wait_for 60 kube-apiserver curl -fsS --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" \
    "https://$APISERVER_HOST:$APISERVER_PORT/readyz"

  write_kubeconfig "$kubeconfig" admin
  write_kubeconfig "$dir/controller-manager.kubeconfig" controller-manager
  write_kubeconfig "$dir/scheduler.kubeconfig" scheduler

  start kube-controller-manager "$k8s_bin/kube-controller-manager" \
    --kubeconfig "$dir/controller-manager.kubeconfig" \
    --authentication-kubeconfig "$dir/controller-manager.kubeconfig" \
    --authorization-kubeconfig "$dir/controller-manager.kubeconfig" \
    --bind-address 127.0.0.1 --secure-port "$kcm_port" --leader-elect=false \
    --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
    --use-service-account-credentials=true \
    --controllers '*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller,-route,-attachdetach' \
    --kube-api-qps 5000 --kube-api-burst 10000 \
    --concurrent-deployment-syncs 20 --concurrent-replicaset-syncs 20 --concurrent-gc-syncs 40
  cat >"$dir/scheduler.yaml" <<EOF
apiVersion: kubescheduler.config.k8s.io/v1
kind: KubeSchedulerConfiguration
clientConnection:
  kubeconfig: $dir/scheduler.kubeconfig
  qps: 5000
  burst: 10000
leaderElection:
  leaderElect: false
EOF
  start kube-scheduler "$k8s_bin/kube-scheduler" --config "$dir/scheduler.yaml" \
    --bind-address 127.0.0.1 --secure-port "$sched_port" \
    --authentication-kubeconfig "$dir/scheduler.kubeconfig" --authorization-kubeconfig "$dir/scheduler.kubeconfig"

  $kubectl apply -f "$root/hack/kwok/crd-stages.yaml" >/dev/null
  wait_for 30 "the kwok Stage CRD" $kubectl get stages.kwok.x-k8s.io
  $kubectl apply -f "$root/hack/kwok/stages/" >/dev/null
  guard_kwok_pods
  start kwok "$kwok_bin" --kubeconfig "$kubeconfig" \
    --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
    --enable-crds Stage --server-address "127.0.0.1:$kwok_port" \
    --node-lease-duration-seconds 40 --cidr "$KWOK_POD_CIDR" --node-ip 127.0.0.1
  $kubectl apply -f "$root/hack/kwok/nodes.yaml" >/dev/null
  wait_for 60 "two Ready kwok nodes" kwok_ready
  wait_for 60 "schedulable kwok nodes" untainted
  # ServiceAccount admission needs each namespace's "default" ServiceAccount.
  wait_for 30 "the default ServiceAccount" $kubectl -n default get serviceaccount default
  if [[ $real_node == 1 ]]; then "$root/hack/node.sh" up; fi
  log "up: $($kubectl version -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["serverVersion"]["gitVersion"])') on https://$APISERVER_HOST:$APISERVER_PORT"
  print_env
}

print_env() {
  printf 'export KUBECONFIG=%s\n' "$kubeconfig"
}

down() {
  local f pid
  # The real node first: it deletes its pods through the API server.
  "$root/hack/node.sh" down
  for f in "$dir"/pids/*; do
    [[ -e $f ]] || continue
    pid=$(cat "$f")
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
  done
  for f in "$dir"/pids/*; do
    [[ -e $f ]] || continue
    pid=$(cat "$f")
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  done
  unguard_kwok_pods
  # Keep the logs for a post-mortem; drop the state.
  find "$dir" -mindepth 1 -maxdepth 1 ! -name logs -exec rm -rf {} +
  log "down"
}

# What `down` would have removed, on a host where no local cluster runs: prints nothing when clean.
leftovers() {
  "$root/hack/node.sh" leftovers
  kwok_runs || ip route show "$KWOK_POD_CIDR" | sed 's/^/route /'
}

case ${1:-} in
  up) up ;;
  down) down ;;
  leftovers) leftovers ;;
  status) healthy ;;
  env) print_env ;;
  *) echo "usage: $0 up|down|status|env|leftovers" >&2; exit 2 ;;
esac
