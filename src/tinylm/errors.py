"""The one exception type tinylm raises for problems a person can fix.

The CLI prints its message (no traceback) and exits with status 2. Messages say what is
wrong and what to do about it.
"""


class TinyLMError(Exception):
    """A problem with the user's input, files or configuration, explained in the message."""
