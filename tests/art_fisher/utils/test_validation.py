"""The shared argument checks: each accepts what it should, and refuses the rest with the right error.

A wrong type is a TypeError, a wrong value a ValueError, and every message names the argument.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import pytest

from art_fisher.utils import (
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

Norm = Literal["l2", "linf"]


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        (3, {}, 3),
        (np.int64(3), {"low": 1}, 3),
        (np.uint8(7), {"low": 1, "high": 7}, 7),
        (0, {"low": 0}, 0),
        (None, {"optional": True}, None),
    ],
)
def test_check_int_accepts(value, kwargs, expected):
    result = check_int(value, "steps", **kwargs)
    assert result == expected
    assert result is None or type(result) is int


@pytest.mark.parametrize("value", [True, np.bool_(True), 3.0, np.float32(3), "3", None])
def test_check_int_refuses_the_wrong_type(value):
    with pytest.raises(TypeError, match=r"^steps must be an int >= 1; got "):
        check_int(value, "steps", low=1)


@pytest.mark.parametrize(("value", "kwargs", "match"), [
    (0, {"low": 1}, r"^batch_size must be an int >= 1; got 0\.$"),
    (70000, {"low": 1, "high": 65536}, r"^batch_size must be an int in \[1, 65536\]; got 70000\.$"),
    (5, {"high": 4}, r"^batch_size must be an int <= 4; got 5\.$"),
    (0, {"low": 1, "optional": True}, r"^batch_size must be None or an int >= 1; got 0\.$"),
])  # fmt: skip
def test_check_int_refuses_values_out_of_range(value, kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_int(value, "batch_size", **kwargs)


@pytest.mark.parametrize(
    ("value", "kwargs", "expected"),
    [
        (0.5, {"low": 0.0}, 0.5),
        (2, {"low": 0.0, "low_open": True}, 2.0),
        (np.float32(0.25), {"low": 0.0, "high": 1.0}, 0.25),
        (np.int32(1), {"low": 0.0, "high": 1.0}, 1.0),
        (0.0, {"low": 0.0}, 0.0),
        (1.0, {"high": 1.0}, 1.0),
        (None, {"optional": True}, None),
    ],
)
def test_check_real_accepts(value, kwargs, expected):
    result = check_real(value, "gamma", **kwargs)
    assert result == expected
    assert result is None or type(result) is float


@pytest.mark.parametrize("value", [True, "0.5", None, 1j, [0.5]])
def test_check_real_refuses_the_wrong_type(value):
    with pytest.raises(TypeError, match=r"^gamma must be a finite number >= 0; got "):
        check_real(value, "gamma", low=0.0)


@pytest.mark.parametrize(("value", "kwargs", "match"), [
    (0.0, {"low": 0.0, "low_open": True}, r"^rate must be a finite number > 0; got 0\.0\.$"),
    (-1, {"low": 0.0}, r"^rate must be a finite number >= 0; got -1\.$"),
    (1.0, {"low": 0.0, "high": 1.0, "high_open": True}, r"^rate must be a finite number in \[0, 1\); got 1\.0\.$"),
    (2.0, {"high": 1.0, "high_open": True}, r"^rate must be a finite number < 1; got 2\.0\.$"),
    (float("nan"), {}, r"^rate must be a finite number; got nan\.$"),
    (float("inf"), {"low": 0.0}, r"^rate must be a finite number >= 0; got inf\.$"),
])  # fmt: skip
def test_check_real_refuses_values_out_of_range(value, kwargs, match):
    with pytest.raises(ValueError, match=match):
        check_real(value, "rate", **kwargs)


def test_check_probability_has_open_or_closed_ends():
    assert check_probability(0.05, "target_fpr") == 0.05
    assert check_probability(np.float64(0.5), "target_fpr") == 0.5
    for end in (0.0, 1.0):
        with pytest.raises(ValueError, match=r"^target_fpr must be a finite number in \(0, 1\); got "):
            check_probability(end, "target_fpr")
        assert check_probability(end, "random_start", closed=True) == end
    with pytest.raises(ValueError, match=r"^random_start must be a finite number in \[0, 1\]; got 1\.5\.$"):
        check_probability(1.5, "random_start", closed=True)
    with pytest.raises(TypeError, match=r"^target_fpr must be a finite number in \(0, 1\); got '0\.05'\.$"):
        check_probability("0.05", "target_fpr")


def test_check_bool():
    assert check_bool(True, "progress") is True
    assert check_bool(np.bool_(False), "progress") is False
    for value in (0, 1, "yes", None):
        with pytest.raises(TypeError, match=r"^progress must be True or False; got "):
            check_bool(value, "progress")


def test_literal_values_reads_the_type():
    assert literal_values(Norm) == ("l2", "linf")
    assert literal_values(Norm | Literal["l1"]) == ("l2", "linf", "l1")
    assert literal_values(["a", "b"]) == ("a", "b")
    with pytest.raises(TypeError, match="choices must be a Literal type"):
        literal_values(str)


def test_check_choice():
    assert check_choice("linf", "norm", Norm) == "linf"
    assert check_choice(3, "in_channels", (1, 3)) == 3
    with pytest.raises(ValueError, match=r"^norm must be one of \['l2', 'linf'\]; got 'l1'\.$"):
        check_choice("l1", "norm", Norm)
    with pytest.raises(ValueError, match=r"^in_channels must be one of \[1, 3\]; got 2\.$"):
        check_choice(2, "in_channels", (1, 3))
    for value in (2, None, ["l2"]):
        with pytest.raises(TypeError, match=r"^norm must be one of \['l2', 'linf'\]; got "):
            check_choice(value, "norm", Norm)
    with pytest.raises(TypeError, match=r"^in_channels must be one of \[1, 3\]; got True\.$"):
        check_choice(True, "in_channels", (1, 3))


def test_check_path(tmp_path):
    assert check_path(str(tmp_path), "data_dir") == tmp_path
    assert check_path(tmp_path, "data_dir", exists=True) == tmp_path
    assert check_path("~/x", "data_dir") == Path.home() / "x"
    assert check_path(None, "data_dir", optional=True) is None
    with pytest.raises(TypeError, match=r"^data_dir must be a path \(str or Path\); got 3\.$"):
        check_path(3, "data_dir")
    with pytest.raises(TypeError, match=r"^data_dir must be a path \(str or Path\); got None\.$"):
        check_path(None, "data_dir")
    with pytest.raises(ValueError, match=r"^data_dir must be a path; got the empty string\.$"):
        check_path("", "data_dir")
    with pytest.raises(ValueError, match=r"^data_dir must be an existing file or folder; got '.*missing'"):
        check_path(tmp_path / "missing", "data_dir", exists=True)


def test_number_predicates():
    assert is_integer(np.int16(2)) and not is_integer(True) and not is_integer(2.0)
    assert is_real(np.float32(2)) and is_real(2) and not is_real(np.bool_(True)) and not is_real("2")
