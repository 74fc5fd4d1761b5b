"""Exit codes of every `respawn` command (`docs/contracts.md`, "Exit codes")."""

EXIT_OK = 0  # nothing needs a person
EXIT_FAILED = 1  # an action failed, or a run needs a person (halted by a breaker, unknown)
EXIT_USAGE = 2  # bad usage or bad config: the message names the file, field and fix


class UsageError(Exception):
    """Bad command-line usage; printed without a traceback, exit 2."""
