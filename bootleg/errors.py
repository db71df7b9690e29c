"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class BootlegError(Exception):
    """Bad input from the user (config, file, value). The message names what is wrong
    and what is expected; the CLI prints ``error: <message>`` and exits 2."""
