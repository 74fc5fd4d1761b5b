#!/usr/bin/env bash
# The instance's onstart: run the pod bootstrap, which restores the latest verified checkpoint
# and supervises the trainer. The provider passes RESPAWN_* and the secrets in the environment.
#
# `exec`, not a child process: on RunPod this script is the container's PID 1, and a spot
# reclaim sends SIGTERM to PID 1 only; the bootstrap must receive it to checkpoint in time.
# Vast re-runs onstart when a paused (outbid) instance resumes: the bootstrap then finds a
# newer generation in the store, if there is one, and exits without writing.
set -euo pipefail
log_dir="${RESPAWN_LOG_DIR:-/var/log/respawn}"
mkdir -p "$log_dir"
cd "${RESPAWN_WORKDIR:-/workspace}"
exec > >(tee -a "$log_dir/pod.log") 2>&1
# respawn's pod side lives in its own virtual environment, never in the trainer's Python:
# `{python}` in the trainer's command is the image's own python3 (or python), found on PATH
# with respawn's venv left out (docs/pod-image.md); `pod.python` overrides it.
if [ -z "${RESPAWN_TRAINER_PYTHON:-}" ]; then
  image_path=""
  IFS=: read -ra path_dirs <<< "$PATH"
  for d in "${path_dirs[@]}"; do
    case "$d" in /opt/respawn/venv*) ;; *) image_path="${image_path:+$image_path:}$d" ;; esac
  done
  RESPAWN_TRAINER_PYTHON="$(PATH="$image_path" command -v python3 || PATH="$image_path" command -v python || true)"
  export RESPAWN_TRAINER_PYTHON
fi
ulimit -n "$(ulimit -Hn)" 2>/dev/null || ulimit -n 65536 2>/dev/null || true
exec "${RESPAWN_POD_BIN:-/opt/respawn/venv/bin/respawn-pod}"
