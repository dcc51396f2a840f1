#!/usr/bin/env bash
# Tune the three reference pipelines, then bench each tuned spec against static, the spec as written (ensemble)
# and the in-process ceiling in ONE bench run (ratios within one run). Usage: benchmarks/tune.sh OUT [BUDGET]
set -euo pipefail
OUT=${1:-benchmarks/results/tune}
BUDGET=${2:-10m}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
run() {  # spec pipeline
  local spec=$1 pipeline=$2 folder
  folder=$(dirname "$spec")
  mkdir -p "$OUT/$pipeline"
  compound tune "$spec" -p "$pipeline" -o "$folder/$pipeline.tuned.yaml" --budget "$BUDGET" --concurrency 64 \
    --report "$OUT/$pipeline" 2>&1 | tee "$OUT/$pipeline/tune.log"
  cp "$folder/$pipeline.tuned.yaml" "$OUT/$pipeline/"
  compound bench "$spec" -p "$pipeline" --profiles static,ensemble,tuned,ceiling --tuned "$folder/$pipeline.tuned.yaml" \
    --concurrency 16,64 --duration 8s --warmup 2s --out "$OUT/$pipeline" 2>"$OUT/$pipeline/bench.log" \
    | tee "$OUT/$pipeline/bench.txt"
  rm -rf "$OUT/$pipeline/repos" "$OUT/$pipeline/work"
}
run examples/synthetic/pipeline.yaml "${PIPELINES_HEAVY:-fanout_heavy}"
run examples/synthetic/pipeline.yaml fanout
run examples/rag/pipeline.yaml rag
