"""Errors caused by evaluation input (a missing or empty text, a bad data spec)."""


class EvalInputError(ValueError):
    """Bad evaluation input; the CLI prints it as one line."""
