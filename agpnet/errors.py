"""The one error type for bad input (files, layouts, arguments).

Its message is a single line that names the path (or argument) and what was expected.
The CLI prints that line and exits with status 2, without a traceback.
"""


class AgpnetError(Exception):
    """Bad input: `str(err)` is one line naming the path and what was expected."""
