"""respawn: keep long GPU training runs alive on spot instances.

Layout (one namespace, `docs/layout.md`):

- `respawn.contract`     what the controller and the pod agree on; imports nothing of ours
- `respawn.store`        the checkpoint store and pointer protocol (pod writes, controller reads)
- `respawn.pod`          what runs on the GPU box (folder `pod_image/`)
- `respawn.provisioning` one adapter per cloud behind one interface (folder `provisioning/`)
- `respawn.controller`   the stateless control loop and the CLI (folder `controller/`)
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("respawn-gpu")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"
