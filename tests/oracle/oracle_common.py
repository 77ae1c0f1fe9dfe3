"""Shared by the oracle's modules (see hf_reference.py): the input-error exception and the
JSON value predicates."""


class OracleError(Exception):
    """A problem with the inputs (checkpoint, config, tokens); reported without a traceback."""


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool)
