#!/usr/bin/env bash
# `make demo`: the main job end to end on the local cluster.
#  1. the chart installed with its defaults: the operator runs in-cluster from its image, on the
#     real node, with the chart's ServiceAccount and RBAC;
#  2. a ModelServer on the real node: the prefetch init container fetches a small model made on
#     the spot from nginx on the node's bridge, the worker imports, loads and serves it, the
#     kubelet's probes make it Ready, a chat completion comes back through its Service;
#  3. examples/modelserver.yaml on kwok's simulated GPU nodes: GPU scheduling, which the real node
#     (no GPU) cannot show.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dir=${GLOWPLUG_CLUSTER_DIR:-$root/.cluster}
export KUBECONFIG=${KUBECONFIG:-$dir/kubeconfig}
ns=glowplug-demo
system=glowplug-system
# The real node's bridge address (hack/node.sh): pods reach the host here.
node_ip=10.88.0.1
run="python3 -m uv run --locked"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
placement='{"nodeSelector": {"glowplug.dev/real-node": "true"},
  "tolerations": [{"key": "glowplug.dev/real-node", "operator": "Exists", "effect": "NoSchedule"}]}'

say "The nodes: kwok's simulated GPU nodes and one real node (containerd)"
kubectl get nodes -o wide

say "helm install glowplug (the chart's default images, built by 'make images'; placed on the real node)"
kubectl create namespace $ns --dry-run=client -o yaml \
  | kubectl label --local -f - pod-security.kubernetes.io/enforce=restricted -o yaml \
  | kubectl apply -f -
values=$(mktemp)
trap 'rm -f "$values"' EXIT
printf '{"namespaces": ["%s"], %s' "$ns" "${placement#\{}" >"$values"
helm upgrade --install glowplug charts/glowplug -n $system --create-namespace -f "$values" --wait --timeout 180s
kubectl -n $system get pods -o wide

say "A small model made on the spot, served by nginx on $node_ip (the weight source)"
www=$dir/demo/www
mkdir -p "$www" "$dir/demo/nginx"
if [[ ! -f $www/tiny/manifest.json ]]; then
  $run python -m glowplug_worker.devtools.tiny_model "$www/tiny" >/dev/null
  $run python -m glowplug_worker.devtools.manifest "$www/tiny" --revision demo >/dev/null
  chmod -R a+rX "$www"
fi
echo "(a tiny Llama-shaped model with random weights: its answer is noise; the path is the point)"
if [[ ! -f $dir/pids/demo-nginx ]] || ! kill -0 "$(cat "$dir/pids/demo-nginx")" 2>/dev/null; then
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  cat >"$dir/demo/nginx/nginx.conf" <<EOF
daemon off;
worker_processes 1;
pid $dir/demo/nginx/nginx.pid;
error_log $dir/demo/nginx/error.log warn;
events { worker_connections 64; }
http {
  access_log $dir/demo/nginx/access.log;
  client_body_temp_path $dir/demo/nginx/body;
  server { listen $node_ip:$port; root $www; }
}
EOF
  echo "$port" >"$dir/demo/nginx/port"
  setsid nginx -c "$dir/demo/nginx/nginx.conf" -p "$dir/demo/nginx" >/dev/null 2>&1 </dev/null &
  echo $! >"$dir/pids/demo-nginx"
fi
source_url="http://$node_ip:$(cat "$dir/demo/nginx/port")/tiny/manifest.json"
echo "source: $source_url"

say "A ModelServer on the real node (gpus: 0)"
kubectl -n $ns apply -f - <<EOF
apiVersion: glowplug.dev/v1alpha1
kind: ModelServer
metadata: {name: tiny-real}
spec:
  model: {source: "$source_url", task: generate}
  resources: {gpus: 0, cpu: 500m, memory: 3Gi}
  placement: $(tr -d '\n' <<<"$placement")
  cache: {kind: EmptyDir}
  startup:
    budgetSeconds: 300
    optimizations: [{name: prefetch-weights}, {name: fast-load}, {name: hf-offline}, {name: native-model}]
EOF
kubectl -n $ns wait --for=condition=Ready modelserver/tiny-real --timeout=300s
kubectl -n $ns get modelservers
kubectl -n $ns get pods -o wide -l glowplug.dev/modelserver=tiny-real

say "POST /v1/chat/completions through its Service (kube-proxy)"
ip=$(kubectl -n $ns get service tiny-real -o jsonpath='{.spec.clusterIP}')
# kube-proxy routes the Service to the pod a moment after the pod turns Ready.
for attempt in $(seq 60); do
  curl -fs "http://$ip:8000/v1/chat/completions" -H 'content-type: application/json' \
    -d '{"model": "tiny-real", "messages": [{"role": "user", "content": "Hello, glowplug!"}], "max_tokens": 8, "temperature": 0}' \
    && break
  ((attempt < 60)) && sleep 0.5
done
echo

say "Its cold start (status.coldStart)"
kubectl -n $ns get ms tiny-real -o json | python3 -c "$(cat <<'PY'
import json, sys
cold = json.load(sys.stdin)["status"].get("coldStart") or {}
phases = cold.get("phases") or {}
total = max(cold.get("lastSeconds") or 0, *phases.values(), 1e-9)  # bars: shares of the start
# The pod's phases, then the worker's own (inside `start`), in the order they happen.
order = ["schedule", "download", "start", "import", "config", "load", "warmup"]
for name in sorted(phases, key=lambda p: order.index(p) if p in order else len(order)):
    seconds = phases[name]
    indent = "    " if name in order[3:] else "  "
    print(f"{indent}{name:>10} {seconds:7.2f} s  " + "#" * max(1, round(40 * seconds / total)))
print(f"  {'total':>10} {cold.get('lastSeconds', 0):7.2f} s")
PY
)"

say "examples/modelserver.yaml on kwok's simulated GPU nodes (GPU scheduling; no GPU here)"
kubectl -n $ns apply -f examples/modelserver.yaml
kubectl -n $ns wait --for=condition=Ready modelserver/tiny-llama --timeout=120s
kubectl -n $ns get modelservers
kubectl -n $ns get pods -o wide -l glowplug.dev/modelserver=tiny-llama

say "Done. Try: kubectl -n $ns describe ms tiny-real; make cluster-down when finished."
