"""Errors a user can fix. The CLI prints them as one line and exits non-zero; anything else is a bug."""


class UserError(ValueError):
    """Bad input from the user: a recipe, a data file, a directory. The message names file, line, field."""


class ConfigError(UserError):
    """A recipe or override with an unknown key, a wrong type or an invalid value."""


class DataError(UserError):
    """A data file that cannot be read as what it claims to be."""
