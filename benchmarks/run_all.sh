#!/usr/bin/env bash
# The benchmark runs behind docs/benchmarks.md: every profile, one pipeline after another.
# Usage: bash benchmarks/run_all.sh [OUT_DIR] [DURATION]   (needs `pip install .[bench,rag]`)
set -euo pipefail
OUT=${1:-bench-results}
DURATION=${2:-8s}
CONC=1,4,16,64,256
PROFILES=static,ensemble,optimized,fused,ceiling,ray-serve,ray-serve-fused,pytriton
compound bench examples/synthetic/pipeline.yaml --pipeline fanout --profiles $PROFILES --concurrency $CONC --duration "$DURATION" --warmup 2s --out "$OUT/fanout"
compound bench examples/synthetic/pipeline.yaml --pipeline fanout_heavy --profiles $PROFILES --concurrency $CONC --duration "$DURATION" --warmup 2s --out "$OUT/fanout_heavy"
HF_HUB_OFFLINE=1 compound bench examples/rag/pipeline.yaml --pipeline rag --profiles $PROFILES --concurrency $CONC --duration "$DURATION" --warmup 2s --out "$OUT/rag"
