#!/usr/bin/env bash
# One-command setup of the grrl workspace (run by `make setup`, `make test`, `make demo`).
#
#   1. .venv with ROS 2 Jazzy (ros-jazzy-* PyPI wheels), torch (CPU wheel) and the Python deps,
#      all pinned in requirements.lock;
#   2. the wheels' CMake exports rewritten to this venv's Python/numpy include paths;
#   3. the workspace built with colcon (--symlink-install);
#   4. env.sh written: source it to use the workspace (DDS confined to this host).
#
# Each step records a fingerprint of its inputs and is skipped when nothing changed, so a second
# run is a fast no-op. Nothing is written outside the repository.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
STAMPS="$VENV/.grrl-stamps"
PY_WANTED="3.11"

log() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }
fingerprint() { cat "$@" 2>/dev/null | sha256sum | cut -d' ' -f1; }

# --- 1. virtual environment --------------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  PYTHON="${PYTHON:-}"
  if [ -z "$PYTHON" ]; then
    for candidate in "python$PY_WANTED" python3; do
      if command -v "$candidate" >/dev/null &&
         [ "$("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" = "$PY_WANTED" ]; then
        PYTHON="$candidate"; break
      fi
    done
  fi
  [ -n "$PYTHON" ] || die "Python $PY_WANTED is required (the ros-jazzy-* wheels are cp311); set PYTHON=/path/to/python3.11"
  log "creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
mkdir -p "$STAMPS"
touch "$VENV/COLCON_IGNORE"  # the venv holds ROS package manifests; keep colcon's crawler out

# --- 2. pinned dependencies ---------------------------------------------------------------------
REQ_HASH="$(fingerprint requirements.lock)"
if [ "$(cat "$STAMPS/requirements" 2>/dev/null)" != "$REQ_HASH" ]; then
  log "installing requirements.lock (ROS 2 Jazzy wheels, torch CPU, Python deps)"
  PIP_ARGS=(--disable-pip-version-check --no-input)
  # The CPU torch wheel lies on disk on these machines; never let pip pick a CUDA build.
  [ -d /opt/wheels ] && PIP_ARGS+=(--find-links /opt/wheels)
  "$VENV/bin/python" -m pip install "${PIP_ARGS[@]}" -q --upgrade "pip==26.3" 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -m pip install "${PIP_ARGS[@]}" -q -r requirements.lock 2>&1 | grep -v "is ignored" || true
  "$VENV/bin/python" -m pip check >/dev/null 2>&1 || "$VENV/bin/python" -m pip check | sed 's/^/[setup] pip check: /' >&2 || true
  "$VENV/bin/python" - <<'PY' || die "requirements.lock did not install (see pip output above)"
import importlib, sys
import torch
assert "+cpu" in torch.__version__ or not torch.version.cuda, f"CUDA torch build installed: {torch.__version__}"
for name in ("rclpy", "colcon_core", "yaml", "numpy", "pytest"):
    importlib.import_module(name)
PY
  echo "$REQ_HASH" > "$STAMPS/requirements"
  rm -f "$STAMPS/build"  # new wheels: rebuild the workspace against them
fi

# --- 3. rewrite the wheels' baked-in include paths ----------------------------------------------
# Some wheels' CMake exports name the wheel builder's Python (/opt/python/cp311-cp311/...).
BAKED=/opt/python/cp311-cp311
mapfile -t BAKED_FILES < <(grep -rlF "$BAKED" "$VENV/share" --include='*.cmake' 2>/dev/null || true)
if [ "${#BAKED_FILES[@]}" -gt 0 ]; then
  PY_INC="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
  NP_INC="$("$VENV/bin/python" -c 'import numpy; print(numpy.get_include())')"
  [ -f "$PY_INC/Python.h" ] || die "Python headers missing at $PY_INC (install python3.11-dev)"
  log "rewriting baked-in include paths in ${#BAKED_FILES[@]} CMake export file(s)"
  sed -i -e "s#$BAKED/include/python3.11#$PY_INC#g" \
         -e "s#$BAKED/lib/python3.11/site-packages/numpy/_core/include#$NP_INC#g" \
         "${BAKED_FILES[@]}"
  ! grep -qF "$BAKED" "${BAKED_FILES[@]}" || die "unrecognised $BAKED paths left in: ${BAKED_FILES[*]}"
fi

# --- 4. env script ------------------------------------------------------------------------------
ENV_SCRIPT="$ROOT/env.sh"
ENV_TEXT="$("$ROOT/scripts/render_env.sh" "$ROOT" "$VENV")"
if [ "$(cat "$ENV_SCRIPT" 2>/dev/null)" != "$ENV_TEXT" ]; then
  log "writing env.sh"
  printf '%s\n' "$ENV_TEXT" > "$ENV_SCRIPT"
fi

# --- 5. colcon build ----------------------------------------------------------------------------
# Inputs of the build: every manifest/build file and non-Python file, and the list of all files.
# Python sources are symlinked/egg-linked (--symlink-install), so editing them needs no rebuild.
BUILD_HASH="$( { find src colcon.meta -type f -not -path '*/__pycache__/*' -not -path '*/test/*' | LC_ALL=C sort;
                 find src colcon.meta -type f -not -path '*/__pycache__/*' -not -path '*/test/*' \
                      \( -not -name '*.py' -o -name setup.py -o -name '*.launch.py' \) -print0 |
                   LC_ALL=C sort -z | xargs -0 cat; } | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$STAMPS/build" 2>/dev/null)" != "$BUILD_HASH" ] || [ ! -f install/setup.bash ]; then
  log "building the workspace with colcon"
  (
    set +u
    # shellcheck disable=SC1090
    . "$ENV_SCRIPT" --no-workspace
    colcon build --symlink-install --base-paths src \
      --event-handlers console_cohesion- summary+ status- \
      --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DPython3_FIND_VIRTUALENV=ONLY
  ) || die "colcon build failed (logs in log/latest_build)"
  echo "$BUILD_HASH" > "$STAMPS/build"
fi
log "ready: source env.sh to use the workspace"
