#!/usr/bin/env bash
# device_run.sh step "apioverhead": the API-layer bench (stand-in engine, no GPU use) on the device's
# host CPUs, after the `env` step installed the server's wheels. Output: $OUT/api_overhead.log
set -uo pipefail
timeout 500 python3 bench/bench_api_overhead.py --repeat 3 2>&1 | tee "$OUT/api_overhead.log"
