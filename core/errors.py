"""The one family of errors mmfer raises on purpose, and the exit code each kind gets.

Every project error derives from MmferError; the CLI's single handler (pipeline/cli.py) prints its
message on one line to stderr, without a traceback, and exits with its `exit_code`. Anything else is a
bug and keeps its traceback. Classes also derive from the builtin their callers used to catch
(ValueError, RuntimeError, OSError), so `except ValueError` around a config still works.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILURE = 1        # the command was right, the work failed (a decoder crashed, the disk filled)
EXIT_BAD_INPUT = 2      # usage, config values, or a file or folder the user pointed at is not what it must be
EXIT_INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it


class MmferError(Exception):
    """A failure whose message names the file and the problem; exit code 1."""

    exit_code = EXIT_FAILURE


class BadInputError(MmferError):
    """Bad flags, config values or input files (the user can fix the command); exit code 2."""

    exit_code = EXIT_BAD_INPUT


class ConfigError(BadInputError, ValueError):
    """A config value, YAML file or key=value override that cannot be used; the message names the key."""
