#!/usr/bin/env bash
# The demo on the embedded default (`make demo`): collect noisy demos in the sim through teleop +
# recorder → train BC → deploy in the ROS graph with the sim → evaluate → summary and report.
# Extra arguments go to `grrl demo` (e.g. DEMO_ARGS="--fresh" make demo).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
set +u
# shellcheck disable=SC1091
. ./env.sh
set -u
# shellcheck disable=SC2086
exec grrl demo ${DEMO_ARGS:-}
