"""Checkpoint sources: what a checkpoint is on disk (`docs/contracts.md`, "Checkpoint sources").

A step is described by sources, each a template with `{step}` and a completeness rule. What a
template matches on disk decides what a step is: a directory (every file under it: HF's
`checkpoint-{step}`) or one file (Lightning's `checkpoints/step={step}.ckpt`). Templates may
hold other `{name}` placeholders (AReaL's `epoch{epoch}epochstep{s}globalstep{step}`): those
match any text within one path part.

A path without `{step}` is one file overwritten in place (nanoGPT's `out/ckpt.pt`): its step
comes from `step_from` (a key of a JSON sidecar, or the newest file of a step-named template),
it is snapshotted before publishing and restored to the same path.
"""

from __future__ import annotations

import re
from pathlib import PurePosixPath

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from respawn.contract.durations import Duration

DEFAULT_TEMP_PATTERNS = ("*.tmp", "*.temp", "*.partial", "*.incomplete", ".tmp*", "*.lock")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class StepFrom(BaseModel):
    """Where the step of a file overwritten in place is read: exactly one of `json` (+ `key`)
    or `name`."""

    model_config = ConfigDict(frozen=True, extra="forbid", populate_by_name=True)

    json_path: str | None = Field(
        None,
        alias="json",
        description="a JSON sidecar the trainer writes after the file (published with it), "
        "e.g. 'out/ckpt.json'",
    )
    key: str | None = Field(None, description="with json: the key holding the step, e.g. iter_num")
    name: str | None = Field(
        None,
        description="the step is the newest of the files this template (with {step}) names, "
        "e.g. 'checkpoints/step={step}.ckpt' for Lightning's last.ckpt",
    )

    @model_validator(mode="after")
    def _one_place(self) -> StepFrom:
        if (self.json_path is None) == (self.name is None):
            raise ValueError("set exactly one of 'json' (with 'key') or 'name'")
        if self.json_path is not None and not self.key:
            raise ValueError("'json' needs 'key', the JSON key holding the step (e.g. iter_num)")
        if self.name is not None and _PLACEHOLDER.findall(self.name) != ["step"]:
            raise ValueError("'name' must contain {step} and no other placeholder")
        for v in (self.json_path, self.name):
            if v is not None:
                _check_relative(v)
        return self


def template_regex(template: str) -> re.Pattern[str]:
    """A template as a regex over relative paths: `{step}` is group `step`, any other
    placeholder matches text within one path part."""
    out, pos = [], 0
    for m in _PLACEHOLDER.finditer(template):
        out.append(re.escape(template[pos : m.start()]))
        out.append(r"(?P<step>\d+)" if m.group(1) == "step" else r"[^/]*?")
        pos = m.end()
    out.append(re.escape(template[pos:]))
    return re.compile("^" + "".join(out) + "$")


def template_glob(template: str) -> str:
    return _PLACEHOLDER.sub("*", template)


def _check_relative(v: str) -> None:
    parts = PurePosixPath(v).parts
    if v.startswith("/") or "\\" in v or ".." in parts or "." in v.split("/"):
        raise ValueError("must be a relative path inside the workdir (no '..', no '\\')")


class CheckpointSource(BaseModel):
    """One directory or file of a checkpoint. Exactly one completeness rule: `marker` or
    `quiet_for`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(
        description="directory or file template relative to the pod's workdir, with {step}; "
        "without {step}: one file overwritten in place (needs step_from)"
    )
    marker: str | None = Field(
        None,
        description="complete once this file exists: inside a step directory; next to a step "
        "file or a file overwritten in place (and not older than it)",
    )
    quiet_for: Duration | None = Field(
        None, description="the step is complete once no file changed for this long (e.g. 30s)"
    )
    temp_patterns: tuple[str, ...] = Field(
        DEFAULT_TEMP_PATTERNS, description="files matching these mean a write is in progress"
    )
    required: bool = Field(True, description="an optional source is shipped when present")
    step_from: StepFrom | None = Field(
        None,
        description="for a path without {step} (one file overwritten in place): where its "
        "step is read",
    )

    @field_validator("path")
    @classmethod
    def _template(cls, v: str) -> str:
        names = _PLACEHOLDER.findall(v)
        if names.count("step") > 1:
            raise ValueError("must contain {step} once, e.g. 'outputs/step_{step}'")
        if "step" not in names and names:
            raise ValueError(
                "a path without {step} is one file overwritten in place: it cannot hold other "
                "placeholders"
            )
        _check_relative(v)
        return v.rstrip("/")

    @model_validator(mode="after")
    def _one_rule(self) -> CheckpointSource:
        if self.in_place and self.step_from is None:
            raise ValueError(
                f"{self.path!r} has no {{step}}, so respawn cannot tell one step from the next: "
                "name each step (e.g. 'out/step_{step}' or 'checkpoints/step={step}.ckpt'), or, "
                "for one file overwritten in place, say where its step is read: "
                "step_from: {json: out/ckpt.json, key: iter_num} or "
                "step_from: {name: 'checkpoints/step={step}.ckpt'}"
            )
        sidecar_is_rule = self.in_place and self.sidecar() is not None
        if self.marker is not None and self.quiet_for is not None:
            raise ValueError("set exactly one completeness rule: 'marker' or 'quiet_for'")
        if self.marker is None and self.quiet_for is None and not sidecar_is_rule:
            raise ValueError("set exactly one completeness rule: 'marker' or 'quiet_for'")
        if not self.in_place and self.step_from is not None:
            raise ValueError(
                "step_from is only for a path without {step} (a file overwritten in place); "
                "here the step is in the path"
            )
        return self

    @property
    def in_place(self) -> bool:
        """One file overwritten in place: no {step} in its path."""
        return "{step}" not in self.path

    def sidecar(self) -> str | None:
        """The JSON sidecar published with a file overwritten in place, if any."""
        return self.step_from.json_path if self.step_from is not None else None

    def regex(self) -> re.Pattern[str]:
        """Matches a step directory's or file's path relative to the workdir; group `step`."""
        return template_regex(self.path)

    def glob(self) -> str:
        return template_glob(self.path)

    def owns(self, rel_path: str, step: int | None = None) -> bool:
        """Whether a file's path (relative to the workdir) is one of this source's: inside a
        step directory, a step file, or the file overwritten in place and its sidecar (of
        `step`, when given): a restore writes only such files."""
        if self.in_place:
            return rel_path in (self.path, self.sidecar())
        parts = rel_path.split("/")
        depth = len(self.path.split("/"))
        if len(parts) < depth:
            return False
        m = self.regex().match("/".join(parts[:depth]))
        return m is not None and (step is None or int(m.group("step")) == step)
