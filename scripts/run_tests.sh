#!/usr/bin/env bash
# Run every package's tests (src/*/test) and the workspace tests (tests/) in the workspace env.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
set +u
# shellcheck disable=SC1091
. ./env.sh
set -u
exec python -m pytest "$@"
