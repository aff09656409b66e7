#!/usr/bin/env bash
# The demo on the embedded default. For now: the composed runner brings up the interface-check
# graph, which sends every grrl_msgs type over DDS, and prints what crossed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
set +u
# shellcheck disable=SC1091
. ./env.sh
set -u
exec grrl up --groups interface_check --exit-when-done
