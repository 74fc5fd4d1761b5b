#!/usr/bin/env bash
# The instance's onstart: run the pod bootstrap, which restores the latest verified checkpoint
# and supervises the trainer. The provider passes RESPAWN_* and the secrets in the environment.
# Vast re-runs onstart when a paused (outbid) instance resumes: the bootstrap then finds a
# newer generation in the store, if any, and exits without writing.
set -euo pipefail
mkdir -p /var/log/respawn
cd "${RESPAWN_WORKDIR:-/workspace}"
exec python -m pod_image.bootstrap 2>&1 | tee -a /var/log/respawn/pod.log
