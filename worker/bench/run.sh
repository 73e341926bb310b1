#!/usr/bin/env bash
# Worker benchmark (BENCHMARKS.md "## Worker"): embatch-worker vs the sample-style Python worker
# on the same images against a local moto server, then peak RSS at 1,000 vs 20,000 images.
#   worker/bench/run.sh                       # defaults: 400 images, 3 runs, RSS at 1000,20000
#   worker/bench/run.sh --images 100 --runs 1 --rss-sizes ''   # quick check
#   worker/bench/run.sh --size 4000x3000 --images 60 --rss-sizes ''            # large photos
#   worker/bench/run.sh --photos ../shared/corpus --min-pixels 1.5 --images 39 --rss-sizes ''   # real photos
set -euo pipefail
cd "$(dirname "$0")/../.."
# --workspace: the features scripts/test builds with, so nothing is rebuilt.
cargo build --release --locked --workspace --bins
exec .venv/bin/python worker/bench/bench.py "$@"
