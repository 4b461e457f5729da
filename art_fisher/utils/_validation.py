"""Argument checks shared by ``art_fisher`` and ``nni_lease``: one policy, one message shape.

Every check takes the value and the argument's ``name`` and returns the value in its plain Python form
(``int``, ``float``, ``bool``, ``str``, :class:`~pathlib.Path`). The policy:

- a value of the wrong type is a :class:`TypeError` (``bool`` is not a number here, although Python
  makes it an ``int``; NumPy's integer and floating scalars are numbers);
- a value of the right type outside what the argument allows is a :class:`ValueError`;
- the message names the argument, says what was expected and shows what came, e.g.
  ``batch_size must be an int in [1, 65536]; got 0.``

Choice arguments are typed with a :data:`typing.Literal` in the public signature, and their allowed
values are read from that type (:func:`literal_values`), so the signature, the documentation and the
check cannot disagree.
"""

from __future__ import annotations

import math
import typing
from collections.abc import Sequence
from numbers import Integral, Real
from pathlib import Path
from typing import Any

import numpy as np


def _shown(value: object) -> str:
    """``value`` for an error message: its type and a short repr."""
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    if value is None or type(value) in (str, bool, int, float):
        return text
    return f"{type(value).__name__} {text}"


def _bound(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def _interval(low: float | None, high: float | None, low_open: bool, high_open: bool) -> str:
    """``[low, high]``, ``(low, high)``, ``>= low`` ... in words for a message."""
    if low is not None and high is not None:
        return f"in {'(' if low_open else '['}{_bound(low)}, {_bound(high)}{')' if high_open else ']'}"
    if low is not None:
        return f"{'>' if low_open else '>='} {_bound(low)}"
    if high is not None:
        return f"{'<' if high_open else '<='} {_bound(high)}"
    return ""


def is_integer(value: object) -> bool:
    """Whether ``value`` is an integer for these checks: an ``int`` or NumPy integer, not a ``bool``."""
    return isinstance(value, Integral) and not isinstance(value, bool) and not isinstance(value, np.bool_)


def is_real(value: object) -> bool:
    """Whether ``value`` is a real number for these checks: an int or float (NumPy's too), not a ``bool``."""
    return isinstance(value, Real) and not isinstance(value, bool) and not isinstance(value, np.bool_)


def check_int(
    value: object,
    name: str,
    *,
    low: int | None = None,
    high: int | None = None,
    optional: bool = False,
) -> Any:
    """``value`` as an ``int`` in ``[low, high]`` (``None`` also when ``optional``).

    Parameters
    ----------
    value : object
        The argument's value.
    name : str
        The argument's name, for the messages.
    low, high : int or None
        Inclusive bounds; ``None``: unbounded on that side.
    optional : bool
        Accept ``None`` (and return it).

    Returns
    -------
    int or None
        ``int(value)``.

    Raises
    ------
    TypeError
        If ``value`` is not an integer (a ``bool``, a float, a string ...).
    ValueError
        If it lies outside ``[low, high]``.

    Examples
    --------
    >>> check_int(3, "steps", low=1)
    3
    >>> check_int(0, "steps", low=1)
    Traceback (most recent call last):
    ...
    ValueError: steps must be an int >= 1; got 0.
    """
    if value is None and optional:
        return None
    expected = ("None or an int" if optional else "an int") + (
        " " + _interval(low, high, False, False) if low is not None or high is not None else ""
    )
    if not is_integer(value):
        raise TypeError(f"{name} must be {expected}; got {_shown(value)}.")
    number = int(typing.cast(Integral, value))
    if (low is not None and number < low) or (high is not None and number > high):
        raise ValueError(f"{name} must be {expected}; got {number}.")
    return number


def check_real(
    value: object,
    name: str,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    optional: bool = False,
) -> Any:
    """``value`` as a finite ``float`` between ``low`` and ``high`` (``None`` also when ``optional``).

    Parameters
    ----------
    value : object
        The argument's value (an int or float, NumPy's scalars included).
    name : str
        The argument's name, for the messages.
    low, high : float or None
        Bounds; ``None``: unbounded on that side (the value must still be finite).
    low_open, high_open : bool
        Exclude the bound itself (``low_open=True``: ``value > low``).
    optional : bool
        Accept ``None`` (and return it).

    Returns
    -------
    float or None
        ``float(value)``.

    Raises
    ------
    TypeError
        If ``value`` is not a real number.
    ValueError
        If it is NaN or infinite, or lies outside the interval.

    Examples
    --------
    >>> check_real(0.5, "gamma", low=0.0)
    0.5
    >>> check_real(0, "learning_rate", low=0.0, low_open=True)
    Traceback (most recent call last):
    ...
    ValueError: learning_rate must be a finite number > 0; got 0.
    """
    if value is None and optional:
        return None
    interval = _interval(low, high, low_open, high_open)
    expected = ("None or a finite number" if optional else "a finite number") + (f" {interval}" if interval else "")
    if not is_real(value):
        raise TypeError(f"{name} must be {expected}; got {_shown(value)}.")
    number = float(typing.cast(Real, value))
    if (
        not math.isfinite(number)
        or (low is not None and (number < low or (low_open and number == low)))
        or (high is not None and (number > high or (high_open and number == high)))
    ):
        raise ValueError(f"{name} must be {expected}; got {value!r}.")
    return number


def check_probability(value: object, name: str, *, closed: bool = False) -> float:
    """``value`` as a ``float`` in ``(0, 1)`` (``closed=True``: ``[0, 1]``), e.g. a ``target_fpr``.

    Raises
    ------
    TypeError
        If ``value`` is not a real number.
    ValueError
        If it lies outside the interval.

    Examples
    --------
    >>> check_probability(0.05, "target_fpr")
    0.05
    >>> check_probability(1.0, "target_fpr")
    Traceback (most recent call last):
    ...
    ValueError: target_fpr must be a finite number in (0, 1); got 1.0.
    """
    return check_real(value, name, low=0.0, high=1.0, low_open=not closed, high_open=not closed)


def check_bool(value: object, name: str) -> bool:
    """``value`` if it is ``True`` or ``False`` (a NumPy ``bool_`` too).

    Raises
    ------
    TypeError
        For anything else (``0``, ``1``, ``"yes"``, ``None`` ...).

    Examples
    --------
    >>> check_bool(True, "progress")
    True
    """
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    raise TypeError(f"{name} must be True or False; got {_shown(value)}.")


def literal_values(choices: Any) -> tuple[Any, ...]:
    """The allowed values of a ``Literal[...]`` type (nested ``Literal`` and ``Union`` flattened).

    A sequence of values is returned as a tuple, unchanged.

    Examples
    --------
    >>> from typing import Literal
    >>> literal_values(Literal["l2", "linf"])
    ('l2', 'linf')
    """
    if isinstance(choices, Sequence) and not isinstance(choices, str):
        return tuple(choices)
    if typing.get_origin(choices) in (typing.Literal, typing.Union):
        out: list[Any] = []
        for arg in typing.get_args(choices):
            out += literal_values(arg) if typing.get_origin(arg) is not None else [arg]
        return tuple(dict.fromkeys(out))
    raise TypeError(f"choices must be a Literal type or a sequence of values; got {_shown(choices)}.")


def check_choice(value: object, name: str, choices: Any) -> Any:
    """``value`` if it is one of ``choices`` (a ``Literal`` type, or a sequence of values).

    Raises
    ------
    TypeError
        If ``value`` does not have the type of the choices (e.g. an int where names are expected).
    ValueError
        If it has their type but is not one of them.

    Examples
    --------
    >>> from typing import Literal
    >>> check_choice("linf", "norm", Literal["l2", "linf"])
    'linf'
    >>> check_choice("l1", "norm", Literal["l2", "linf"])
    Traceback (most recent call last):
    ...
    ValueError: norm must be one of ['l2', 'linf']; got 'l1'.
    """
    allowed = literal_values(choices)
    if value in allowed and any(type(value) is type(a) for a in allowed):
        return value
    if not any(isinstance(value, type(a)) and not isinstance(value, bool) for a in allowed):
        raise TypeError(f"{name} must be one of {list(allowed)}; got {_shown(value)}.")
    raise ValueError(f"{name} must be one of {list(allowed)}; got {value!r}.")


def check_path(value: object, name: str, *, optional: bool = False, exists: bool = False) -> Any:
    """``value`` as an expanded :class:`~pathlib.Path` (``~`` resolved); ``None`` too when ``optional``.

    Parameters
    ----------
    value : object
        A ``str`` or ``os.PathLike``.
    name : str
        The argument's name, for the messages.
    optional : bool
        Accept ``None`` (and return it).
    exists : bool
        Require the path to exist (a file or a folder).

    Raises
    ------
    TypeError
        If ``value`` is not a path.
    ValueError
        If it is empty, or ``exists`` and nothing is there.
    """
    if value is None and optional:
        return None
    if not isinstance(value, (str, Path)) and not hasattr(value, "__fspath__"):
        raise TypeError(f"{name} must be {'None or ' if optional else ''}a path (str or Path); got {_shown(value)}.")
    if isinstance(value, str) and not value:
        raise ValueError(f"{name} must be a path; got the empty string.")
    path = Path(typing.cast(str, value)).expanduser()
    if exists and not path.exists():
        raise ValueError(f"{name} must be an existing file or folder; got {str(path)!r}, where nothing is.")
    return path
