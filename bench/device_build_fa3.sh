#!/usr/bin/env bash
# Run ON THE GPU MACHINE (16 cores, nvcc 13.0, no internet) from the repository root, after carrying
# a source mirror made here with:  .venv/bin/python bench/make_source_mirror.py --out .carry/mirror
#   bash bench/device_build_fa3.sh [--mirror .carry/mirror] [--jobs 8] [--sample 16]
# Needs python3 with pyyaml and rich (both on the device); no invoke, no network.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD/python${PYTHONPATH:+:$PYTHONPATH}"
exec python3 bench/device_build_fa3.py "$@"
