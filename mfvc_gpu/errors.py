"""The one exception type for user mistakes: the CLI prints its message and exits with status 2."""


class MFVCError(Exception):
    """A problem the user can fix (bad input, missing data, bad parameter): the message says how."""
