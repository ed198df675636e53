"""The one error type for bad input (files, layouts, arguments).

Its message is a single line that names the path (or argument) and what was expected.
The CLI prints that line and exits with status 2, without a traceback.
"""


class AgpnetError(Exception):
    """Bad input: `str(err)` is one line naming the path and what was expected."""


def error_line(err: BaseException) -> str:
    """The error's message on one line.

    An error raised in a DataLoader worker process reaches the main process as the same type
    built from "Caught X in DataLoader worker process N.\\nOriginal Traceback ...", the worker's
    whole traceback; its last line, "module.X: message", holds the original message.
    """
    text = str(err).strip()
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        text = text.splitlines()[-1].partition(": ")[2] or text.splitlines()[-1]
    return " ".join(text.split())
