#!/usr/bin/env bash
# `make demo`: the main job end to end on the local control plane.
#  1. the CRD and the operator (a real process, watching the demo namespace);
#  2. examples/modelserver.yaml applied and Ready (its pods are simulated by kwok: no GPU here);
#  3. the real worker, on this machine: prefetch a small model made on the spot, serve it,
#     answer one chat request.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
dir=${GLOWPLUG_CLUSTER_DIR:-$root/.cluster}
export KUBECONFIG=${KUBECONFIG:-$dir/kubeconfig}
ns=glowplug-demo
run="python3 -m uv run --locked"
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

say "Installing the ModelServer CRD"
kubectl apply --server-side --force-conflicts -f crds/modelserver.yaml
kubectl wait --for=condition=Established crd/modelservers.glowplug.dev --timeout=60s

say "Starting the operator (log: $dir/logs/operator.log; 'make cluster-down' stops it)"
if [[ -f $dir/pids/operator ]] && kill -0 "$(cat "$dir/pids/operator")" 2>/dev/null; then
  echo "already running"
else
  GLOWPLUG_METRICS_PORT=0 GLOWPLUG_NAMESPACES=$ns setsid $run glowplug-operator \
    >"$dir/logs/operator.log" 2>&1 </dev/null &
  echo $! >"$dir/pids/operator"
fi

say "Applying examples/modelserver.yaml in namespace $ns (PodSecurity: restricted)"
kubectl create namespace $ns --dry-run=client -o yaml \
  | kubectl label --local -f - pod-security.kubernetes.io/enforce=restricted -o yaml \
  | kubectl apply -f -
kubectl -n $ns apply -f examples/modelserver.yaml
echo "(the pods run on kwok's simulated GPU nodes: they go Pending -> Running -> Ready without a GPU)"
kubectl -n $ns wait --for=condition=Ready modelserver/tiny-llama --timeout=120s

say "kubectl get ms"
kubectl -n $ns get modelservers
say "Its status"
kubectl -n $ns get ms tiny-llama -o jsonpath='{range .status.conditions[*]}{.type}={.status} ({.reason}){"\n"}{end}'
kubectl -n $ns get ms tiny-llama -o jsonpath='endpoint: {.status.endpoint}{"\n"}cold start: {.status.coldStart}{"\n"}flags: {.status.effectiveOptimizations}{"\n"}'
say "Its children"
kubectl -n $ns get deployment,service,pods -l glowplug.dev/modelserver=tiny-llama

say "The real worker on this machine: a small model made on the spot, prefetched, served"
work=$(mktemp -d)
trap 'kill "${server:-0}" 2>/dev/null || true; rm -rf "$work"' EXIT
$run python -m glowplug_worker.devtools.tiny_model "$work/source" >/dev/null 2>&1
echo "(a tiny Llama-shaped model with random weights: its answer is noise; the path is the point)"
$run glowplug-worker prefetch --source "file://$work/source" --dest "$work/models/tiny" >/dev/null
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
HF_HUB_OFFLINE=1 GLOWPLUG_TERMINATION_PATH=$work/termination.json \
  $run glowplug-worker serve --model "$work/models/tiny" --port "$port" --device cpu \
  --optimizations prefetch-weights,fast-load,hf-offline,native-model >"$work/serve.log" 2>&1 &
server=$!
for _ in $(seq 300); do
  curl -fsS "http://127.0.0.1:$port/ready" >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || { cat "$work/serve.log"; exit 1; }
  sleep 0.2
done
echo "GET /startup (seconds per phase of the worker's start):"
curl -fsS "http://127.0.0.1:$port/startup" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({k: d[k] for k in ("phases", "time_to_ready_seconds", "optimizations")}))'
echo "POST /v1/chat/completions:"
curl -fsS "http://127.0.0.1:$port/v1/chat/completions" -H 'content-type: application/json' \
  -d '{"model": "tiny", "messages": [{"role": "user", "content": "Hello, glowplug!"}], "max_tokens": 8}'
echo

say "Done. Try: kubectl -n $ns describe ms tiny-llama; make cluster-down when finished."
