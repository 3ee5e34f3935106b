"""The one exception type for bad user input; the CLI turns it into a one-line error, exit 2."""


class UserError(Exception):
    """A problem with what the user asked for (a flag, a file, a checkpoint), not a bug."""


class DivergenceError(Exception):
    """A loss, gradient or parameter became NaN/Inf; training stops without saving."""
