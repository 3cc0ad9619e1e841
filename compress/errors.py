"""Errors caused by the user's input. The CLI prints them as one line each, without a traceback."""

from __future__ import annotations

from evalsuite.errors import ToolkitError, os_error_of  # noqa: F401 (os_error_of re-exported)


class UserError(ToolkitError):
    """A mistake in a plan, a path or a model the user gave us (not a bug in the toolkit)."""


class PlanError(UserError):
    """Every problem found in a plan, reported together (torchtune's ConfigError style)."""

    def __init__(self, problems: list[str], source: str | None = None):
        self.problems = list(problems)
        self.source = source
        where = f"{source}: " if source else ""
        lines = [f"{where}{len(self.problems)} problem(s) in the plan:"]
        lines += [f"  {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class PlanFileError(PlanError):
    """The plan file itself cannot be read as YAML (missing, binary, not UTF-8, malformed, a bomb): one line."""

    def __init__(self, problem: str, source: str | None = None):
        self.problems = [problem]
        self.source = source
        UserError.__init__(self, f"{source}: {problem}" if source else problem)
