"""`respawn logs`: the trainer's recent output from any generation, also after its instance is
gone (the pod uploads its tail: `respawn.pod.logtail`)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable

from respawn.controller.exits import EXIT_FAILED, EXIT_OK
from respawn.controller.redact import Redactor, one_line
from respawn.store.backend import StoreError
from respawn.store.store import CheckpointStore

#: The pod uploads at most 64 KiB; anything larger was not written by a pod of ours.
MAX_LOG_BYTES = 256 * 1024
FOLLOW_SECONDS = 5.0


def read_log(store: CheckpointStore, generation: int) -> bytes | None:
    """The generation's log, never read whole when larger than any pod of ours uploads (a
    pod key can write any size there): that raises TooLargeError, a StoreError."""
    return store.backend.read_bytes(store.keys.log(generation), max_bytes=MAX_LOG_BYTES)


def clean(data: bytes, redact: Redactor) -> list[str]:
    """Pod-written text: redacted with the controller's secrets too, no escape sequences."""
    text = redact(data.decode("utf-8", errors="replace"))
    return [one_line(line, 4000) for line in text.splitlines()]


def _new_lines(before: list[str], after: list[str]) -> list[str]:
    """The lines of `after` past the longest suffix of `before` it starts with (the tail is a
    sliding window: older lines fall off its front as new ones arrive). Linear (a prefix
    function over after + separator + before): a log of repeated lines, which a pod may
    plant, made the quadratic search take half a minute per follow round."""
    seq: list[str | None] = [*after, None, *before]  # None matches no line
    match = [0] * len(seq)
    for i in range(1, len(seq)):
        k = match[i - 1]
        while k and seq[i] != seq[k]:
            k = match[k - 1]
        match[i] = k + 1 if seq[i] == seq[k] else k
    return after[match[-1] :]


def cmd_logs(
    args: argparse.Namespace,
    store: CheckpointStore,
    redact: Redactor,
    sleep: Callable[[float], None] = time.sleep,
) -> int:
    try:
        gens = store.log_generations()
        gen = args.generation if args.generation is not None else (gens[-1] if gens else None)
        data = None if gen is None else read_log(store, gen)
    except StoreError as e:
        print(redact(f"respawn logs: cannot read the store: {e}"), file=sys.stderr)
        return EXIT_FAILED
    lines: list[str] = []
    if gen is None and args.follow:
        # Right after the first launch: following is what one wants, so wait for the pod.
        print(
            f"run {store.run}: no pod has uploaded a log yet; waiting for one (Ctrl-C stops)",
            file=sys.stderr,
            flush=True,
        )
    elif gen is None:
        print(f"run {store.run}: no pod has uploaded a log yet", file=sys.stderr)
        return EXIT_FAILED
    elif data is None:
        known = ", ".join(f"g{g}" for g in gens) or "none"
        print(
            f"run {store.run}: no log of g{gen} (generations with logs: {known})", file=sys.stderr
        )
        return EXIT_FAILED
    else:
        print(
            f"== {store.run} g{gen} (the last {len(data)} bytes the pod uploaded)",
            file=sys.stderr,
        )
        lines = clean(data, redact)
        print("\n".join(lines), flush=True)
    rounds = args.follow_rounds
    while args.follow and (rounds is None or rounds > 0):
        rounds = None if rounds is None else rounds - 1
        sleep(FOLLOW_SECONDS)
        try:
            newest = store.log_generations()
            if newest and (gen is None or newest[-1] > gen) and args.generation is None:
                gen, lines = newest[-1], []
                print(f"== {store.run} g{gen} (a new generation)", file=sys.stderr, flush=True)
            if gen is None:
                continue
            data = read_log(store, gen) or b""
        except StoreError as e:
            print(redact(f"respawn logs: store read failed (retrying): {e}"), file=sys.stderr)
            continue
        fresh = clean(data, redact)
        new = _new_lines(lines, fresh)
        if new:
            print("\n".join(new), flush=True)
        lines = fresh
    return EXIT_OK
