"""Warnings about a config that works but is weaker than it could be (`validate`, `doctor`)."""

from __future__ import annotations

import re

from respawn.controller.config import RunConfig
from respawn.provisioning.registry import grace_warnings

_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def run_warnings(run: RunConfig) -> list[str]:
    out = grace_warnings(run.providers, run.pod.term_grace.total_seconds())
    image = run.pod.image
    if image and not _DIGEST.search(image):
        # A tag can be moved (or pushed over by whoever holds the registry) while a week-long
        # run relaunches: the next generation would run other code than the last.
        out.append(
            f"pod.image {image!r} is not pinned by digest: pin it as IMAGE@sha256:<digest> "
            "(`docker buildx imagetools inspect IMAGE`; docs/pod-image.md)"
        )
    workdir = run.pod.workdir
    if "local" in run.providers and (workdir.startswith("/") or ".." in workdir.split("/")):
        # A cloud instance starts with a fresh disk; a local one's disk is its own directory,
        # and only a workdir inside it is its own.
        out.append(
            f"pod.workdir {workdir!r} is outside the local instance's own directory: every "
            "generation on this machine shares it (a cloud instance starts empty); use a "
            "relative workdir without '..' for the local provider"
        )
    return out
