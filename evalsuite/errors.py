"""Errors caused by evaluation input (a missing or empty text, a bad data spec)."""


class EvalInputError(ValueError):
    """Bad evaluation input; the CLI prints it as one line."""


class BackendUnavailable(RuntimeError):
    """A backend's runtime cannot run here (not installed, no GPU). Defined here, not in
    evalsuite.backends, so that the runners the backends load by entry point can raise it without
    importing their loader."""
