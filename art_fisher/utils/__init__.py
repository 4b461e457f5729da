"""Argument checks and atomic file writes shared by ``art_fisher`` and ``nni_lease``.

The checks follow one policy: :class:`TypeError` for a value of the wrong type (``bool`` is not a
number; NumPy's scalars are), :class:`ValueError` for a value outside what the argument allows, and
a message that names the argument, the expected and the received value. Choice arguments are typed
``Literal[...]`` and checked against that type's values (:func:`literal_values`).

:func:`atomic_write` and :func:`check_output_dir` are where every file and output folder of both
packages goes through.
"""

from art_fisher.utils._atomic import atomic_write, check_output_dir
from art_fisher.utils._validation import (
    check_bool,
    check_choice,
    check_int,
    check_path,
    check_probability,
    check_real,
    is_integer,
    is_real,
    literal_values,
)

__all__ = [
    "atomic_write",
    "check_bool",
    "check_choice",
    "check_int",
    "check_output_dir",
    "check_path",
    "check_probability",
    "check_real",
    "is_integer",
    "is_real",
    "literal_values",
]
