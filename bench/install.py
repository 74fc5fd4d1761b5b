"""The workflow's install step (uv, locked with hashes) against `pip install` of the same
lock, measured in the same run, cold and with a warm download cache.

    .venv/bin/python bench/install.py

A tick job on a GitHub runner is setup + install + one tick; the install is the part that
grows with the dependency set, and the warm number is what a tick pays once setup-uv has
restored its cache. Needs `uv` (pip install uv) and the package index (network or mirror).
Prints seconds and ratios against pip, cold, in the same run.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "control.lock"


def timed(argv: list[str], env_extra: dict[str, str] | None = None) -> float:
    import os

    t = time.perf_counter()
    subprocess.run(
        argv,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, **(env_extra or {})},
    )
    return time.perf_counter() - t


def main() -> None:
    uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
    if uv is None:
        sys.exit("uv is not installed: pip install uv")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        pip_cache, uv_cache = t / "pip-cache", t / "uv-cache"

        def pip_install() -> float:
            venv = t / f"pip-{time.monotonic_ns()}"
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            py = str(venv / "bin" / "python")
            return timed(
                [py, "-m", "pip", "install", "-q", "--require-hashes", "-r", str(LOCK)],
                {"PIP_CACHE_DIR": str(pip_cache)},
            ) + timed(
                [py, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", str(ROOT)]
            )

        def uv_install() -> float:
            venv = t / f"uv-{time.monotonic_ns()}"
            env = {"UV_CACHE_DIR": str(uv_cache)}
            made = timed([uv, "venv", "-q", "--python", sys.executable, str(venv)], env)
            py = str(venv / "bin" / "python")
            return (
                made
                + timed(
                    [
                        uv,
                        "pip",
                        "install",
                        "-q",
                        "--python",
                        py,
                        "--require-hashes",
                        "-r",
                        str(LOCK),
                    ],
                    env,
                )
                + timed(
                    [
                        *(uv, "pip", "install", "-q", "--python", py),
                        *("--no-deps", "--no-build-isolation", str(ROOT)),
                    ],
                    env,
                )
            )

        pip_cold = pip_install()
        uv_cold = uv_install()
        uv_warm = uv_install()
    print(f"pip install (cold cache)    : {pip_cold:6.1f} s  (baseline)")
    print(f"uv  install (cold cache)    : {uv_cold:6.1f} s  ratio {uv_cold / pip_cold:5.2f}x")
    print(f"uv  install (warm cache)    : {uv_warm:6.1f} s  ratio {uv_warm / pip_cold:5.2f}x")
    print("(the workflow's setup-uv restores the uv cache, so a tick pays the warm number)")


if __name__ == "__main__":
    main()
