"""The W&B fake: examples/wandb_local.py (the demo uses it too), with wandb's own files kept in
a temporary directory. Those variables must be set before wandb's settings singleton exists,
so importing this module sets them."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

from respawn.examples.wandb_local import API_KEY, FakeRun, LocalWandb

FakeWandb = LocalWandb

_DIR = tempfile.mkdtemp(prefix="respawn-wandb-")
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)  # each test process made one
for _name in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
    os.environ[_name] = _DIR
os.environ["WANDB_ERROR_REPORTING"] = "false"
os.environ["WANDB_SILENT"] = "true"

__all__ = ["API_KEY", "FakeRun", "FakeWandb"]
