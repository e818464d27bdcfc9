"""The one exception type for user-facing data problems."""


class DataError(Exception):
    """A problem with the user's data (missing folder, empty class, ...).

    The message is one line meant for the user; the CLI prints it without a
    traceback.
    """
