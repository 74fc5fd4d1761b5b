"""The interpreter `{python}` names in the trainer's command.

In the pod image respawn's pod side lives in its own virtual environment (`/opt/respawn/venv`,
no system site-packages), so its interpreter has none of the trainer's packages (torch,
transformers): `{python}` must be the image's own. `onstart.sh` finds it on the image's PATH
(outside respawn's venv) and exports it as `RESPAWN_TRAINER_PYTHON`; `pod.python` overrides
it; without either (tests, the local provider) it is the pod side's own interpreter.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Mapping

from respawn.contract.pod import PodSpec

ENV_TRAINER_PYTHON = "RESPAWN_TRAINER_PYTHON"


def trainer_python(pod: PodSpec, environ: Mapping[str, str]) -> str:
    if pod.python:
        # A bare name is looked up on the trainer's PATH; a path is taken as written.
        if "/" in pod.python:
            return pod.python
        return shutil.which(pod.python, path=environ.get("PATH")) or pod.python
    return environ.get(ENV_TRAINER_PYTHON) or sys.executable
