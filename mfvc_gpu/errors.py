"""The one exception type for user mistakes: the CLI prints its message and exits with status 2."""


class MFVCError(ValueError):
    """A problem the user can fix (bad input, missing data, bad parameter): the message says how.

    A ``ValueError``, as scikit-learn raises for invalid parameters and input.
    """
