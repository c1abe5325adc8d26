"""The one error type a user sees: a single line naming what is wrong and how to fix it."""


class NSAError(ValueError):
    """A user-facing error. ``nsa`` prints ``nsa: error: <message>`` and exits 2, no traceback."""


def yaml_error(what: str, error: Exception) -> NSAError:
    """A YAML parse error in one line, with where it is: ``{what} is not valid YAML (line 3, column 14): ...``."""
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    return NSAError(f"{what} is not valid YAML{where}: {problem}")
