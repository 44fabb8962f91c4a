"""The one exception for a user's mistake: a missing manifest, a wrong column, an unreachable endpoint, a model that
is not registered. The `geosurge` command and the workflows print it as one line (what was wrong, what to do) and
exit with code 2, with no traceback unless `--verbose`; any other exception is a bug and keeps its traceback."""

from __future__ import annotations

EXIT_USER_ERROR = 2  # argparse's code for a bad command line: the same kind of mistake


class UserError(Exception):
    """`problem`: what was wrong, naming the setting or file; `fix`: what to do about it."""

    def __init__(self, problem: str, fix: str = ""):
        super().__init__(problem, fix)
        self.problem, self.fix = problem, fix

    def __str__(self) -> str:
        line = f"{self.problem}: {self.fix}" if self.fix else self.problem
        return " ".join(line.split())  # one line, whatever the wrapped messages held
