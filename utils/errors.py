"""The one exception type for mistakes a user can make (bad files, bad flags, bad data)."""


class UNetError(Exception):
    """A problem with the user's input: the message names the input and what was expected.

    main.py prints the message and exits with status 2 instead of a traceback.
    """
