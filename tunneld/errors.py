"""Errors that stop the daemon with one clear line and no traceback."""


class StartupError(Exception):
    """Something outside our control refused us: the message names the interface,
    address or peer at fault and the step that failed."""
