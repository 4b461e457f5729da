"""Renamed keyword arguments: the old name keeps working for one release, with a DeprecationWarning."""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

#: Default of a deprecated keyword argument or estimator parameter: the caller did not pass it (the
#: string scikit-learn uses for the purpose, so ``get_params``, ``clone`` and saved files need nothing new).
DEPRECATED = "deprecated"


def _given(value: Any) -> bool:
    return not (isinstance(value, str) and value == DEPRECATED)


def renamed(old: str, old_value: Any, new: str, new_value: Any, *, default: Any, stacklevel: int = 3) -> Any:
    """The value of the keyword ``new``, taking a deprecated ``old`` one into account.

    Parameters
    ----------
    old, new : str
        The former and the current name.
    old_value : object
        What the caller passed as ``old``; :data:`DEPRECATED` when nothing.
    new_value : object
        What the caller passed as ``new`` (its default when nothing).
    default : object
        The default of ``new``.
    stacklevel : int
        Of the warning: 3 points at the caller of the function that calls this one.

    Returns
    -------
    object
        ``new_value``, or ``old_value`` when it was given (with a DeprecationWarning).

    Raises
    ------
    TypeError
        If both names were given different values.
    """
    if not _given(old_value):
        return new_value
    warnings.warn(
        f"{old} was renamed {new}; {old} will stop working in the next release. Pass {new}={old_value!r}.",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
    if new_value is not default and new_value != default and new_value != old_value:
        raise TypeError(f"Pass {new} only; got {new}={new_value!r} and its former name {old}={old_value!r}.")
    return old_value


class RenamedParamsMixin:
    """Loading of a scikit-learn estimator saved before some of its names changed (put it first in the bases).

    Objects saved under the former names load: ``_renamed`` maps each former parameter or fitted
    attribute name to the current one.
    """

    _renamed: ClassVar[dict[str, str]] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        state = dict(state)
        for old, new in self._renamed.items():
            if old in state and new not in state:
                state[new] = state.pop(old)
            if not old.endswith("_"):
                state.setdefault(old, DEPRECATED)
        super().__setstate__(state)  # type: ignore[misc]
