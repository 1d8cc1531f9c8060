#!/usr/bin/env bash
# The GPU checks of the worker on a CUDA machine whose Python already has torch and transformers
# (a GPU image without network): the CUDA tests, then bench/worker_coldstart.py.
#
#   bench/gpu_checks.sh tests                 # tests/serve/test_cuda.py (+ loading tests)
#   bench/gpu_checks.sh bench SECONDS [ARGS]  # worker_coldstart.py ARGS, stopped after SECONDS
#
# The image lacks starlette and uvicorn: put their wheels in .whl/ first (on a machine with
# network: pip download --no-deps -d .whl starlette==1.10.0 uvicorn==0.54.0). The 7.2 GB
# checkpoint is built once in a disk-backed directory (drop_caches cannot evict tmpfs); results go
# to $OUT (default bench/results). A whole round (9 configurations, warm and cold) takes 5-6 min
# on an H100: run warm and cold as separate calls (--caches warm / --caches cold) where a call
# has a time limit.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}
if [ "${1:-}" != tests ] && [ "${1:-}" != bench ]; then
  sed -n '2,13p' "$0"
  exit 2
fi
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/glowplug-site .whl/*.whl
fi
export PYTHONPATH=/tmp/glowplug-site:$PWD/worker/src:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
for dir in /var/tmp /tmp "$PWD/.."; do
  if [ "$(stat -f -c %T "$dir")" != tmpfs ]; then model_root=$dir; break; fi
done
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c 'import torch, transformers; print("torch", torch.__version__, "transformers", transformers.__version__)'

case ${1:-} in
tests)
  # MiniLM's weights come from a PyPI package the image may lack: those tests are left out.
  python3 -m pytest tests/serve/test_cuda.py tests/serve/test_loading.py -q -p no:cacheprovider \
    -k "not minilm and not embeddings and not refuses_an_encoder" 2>&1 | tee "$OUT/gpu_tests.log"
  ;;
bench)
  seconds=$2
  shift 2
  timeout "$seconds" python3 bench/worker_coldstart.py --device cuda --preset 7b \
    --model-dir "$model_root/glowplug-bench-7b" --out "$OUT" "$@"
  ;;
esac
