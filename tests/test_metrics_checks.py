"""Bad input to the metrics raises a clear error naming the argument, before any computation."""

from __future__ import annotations

import pytest
import torch
from tests.metrics_cases import make_case
from torch import nn

from art_fisher import fisher_max_eigenvalue, fisher_quadratic_form, fisher_sensitivity, fisher_trace

METRICS = [fisher_trace, fisher_quadratic_form, fisher_sensitivity, fisher_max_eigenvalue]


class CountingModel(nn.Module):
    """Counts forward calls so a test can check that validation ran before any work."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


@pytest.fixture
def mlp():
    model, x = make_case("mlp")
    return CountingModel(model), x


@pytest.mark.parametrize("fn", METRICS)
@pytest.mark.parametrize(
    ("make_x", "error", "match"),
    [
        (lambda x: x.numpy(), TypeError, "x must be a torch.Tensor"),
        (lambda x: x.long(), TypeError, "x must be a floating-point"),
        (lambda x: x[0], ValueError, "x must have a batch dimension"),
        (lambda x: x[:0], ValueError, "x must hold at least one sample"),
        (lambda x: torch.where(x > 0, x, torch.nan), ValueError, "x must be finite"),
        (lambda x: x.clone().index_fill_(0, torch.tensor([1]), torch.inf), ValueError, "x must be finite"),
        (lambda x: x.float(), ValueError, "x must have the model's dtype"),
        (lambda x: x[:, :5], RuntimeError, None),  # wrong feature size: the model itself complains
    ],
)
def test_bad_x(mlp, fn, make_x, error, match):
    model, x = mlp
    with pytest.raises(error, match=match):
        fn(model, make_x(x))
    if error is not RuntimeError:
        assert model.calls == 0


@pytest.mark.parametrize("fn", METRICS)
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"output": "softmax"}, ValueError, "output must be one of"),
        ({"params": ["nope"]}, ValueError, r"params: unknown parameter names \['nope'\]"),
        ({"params": "inner.0.weight"}, TypeError, "params must be None or an iterable"),
        ({"params": [0]}, TypeError, "params must hold parameter names"),
        ({"params": []}, ValueError, "params must name at least one parameter"),
        ({"batch_size": 0}, ValueError, "batch_size must be None or a positive int"),
        ({"batch_size": 2.0}, TypeError, "batch_size must be None or a positive int"),
    ],
)
def test_bad_common_arguments(mlp, fn, kwargs, error, match):
    model, x = mlp
    with pytest.raises(error, match=match):
        fn(model, x, **kwargs)
    assert model.calls == 0


@pytest.mark.parametrize("fn", [fisher_trace, fisher_quadratic_form, fisher_sensitivity])
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "fd"}, ValueError, "method must be one of"),
        ({"epsilon": 0.0}, ValueError, "epsilon must be a finite float > 0"),
        ({"epsilon": -1e-3}, ValueError, "epsilon must be a finite float > 0"),
        ({"epsilon": "1e-3"}, TypeError, "epsilon must be a positive float"),
    ],
)
def test_bad_method_arguments(mlp, fn, kwargs, error, match):
    model, x = mlp
    with pytest.raises(error, match=match):
        fn(model, x, **kwargs)
    assert model.calls == 0


@pytest.mark.parametrize("fn", [fisher_quadratic_form, fisher_sensitivity])
@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"direction": "gradient"}, ValueError, "direction must be one of"),
        ({"direction": "label"}, ValueError, 'direction="label" needs y'),
        ({"direction": "label", "y": torch.tensor([0, 1, 2, 4])}, ValueError, r"y must hold labels in \[0, 3\]"),
        ({"direction": "label", "y": torch.tensor([0, 1, -1, 2])}, ValueError, r"y must hold labels in \[0, 3\]"),
        ({"direction": "label", "y": torch.tensor([0, 1])}, ValueError, r"y must have shape \(4,\)"),
        ({"direction": "label", "y": torch.zeros(4)}, TypeError, "y must hold integer class labels"),
        ({"y": torch.tensor([0, 1, 2, 3])}, ValueError, "y is only used with direction='label'"),
        ({"direction": [torch.ones(3)]}, ValueError, "direction must hold one tensor per selected parameter"),
        ({"direction": 3}, TypeError, "direction must be a name or a sequence of tensors"),
        ({"blockwise": "yes"}, TypeError, "blockwise must be True or False"),
        ({"normalize": 1}, TypeError, "normalize must be True or False"),
        ({"classes": "two"}, ValueError, "classes must be one of"),
    ],
)
def test_bad_direction_arguments(mlp, fn, kwargs, error, match):
    model, x = mlp
    with pytest.raises(error, match=match):
        fn(model, x, **kwargs)


def test_direction_shapes_and_zero(mlp):
    model, x = mlp
    shapes = [p.shape for p in model.parameters()]
    wrong = [torch.ones(s) for s in shapes[:-1]] + [torch.ones(7)]
    with pytest.raises(ValueError, match=r"the tensor for parameter 'inner.2.bias' must have shape \(4,\)"):
        fisher_quadratic_form(model, x, direction=wrong)
    with pytest.raises(ValueError, match="must not be zero"):
        fisher_quadratic_form(model, x, direction=[torch.zeros(s, dtype=torch.float64) for s in shapes])
    with pytest.raises(ValueError, match="direction must be one of"):
        fisher_sensitivity(model, x, direction="top_eigenvector")
    with pytest.raises(ValueError, match="does not support direction=\"top_eigenvector\""):
        fisher_quadratic_form(model, x, direction="top_eigenvector", method="finite_difference")


def test_bad_model():
    x = torch.randn(2, 3, dtype=torch.float64)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        fisher_trace(lambda t: t, x)
    with pytest.raises(ValueError, match="model has no parameters"):
        fisher_trace(nn.Softmax(dim=1), x)
    one_class = nn.Linear(3, 1).double()
    with pytest.raises(ValueError, match="at least 2 classes"):
        fisher_trace(one_class, x)
    flat = nn.Sequential(nn.Linear(3, 2), nn.Flatten(0)).double()
    with pytest.raises(ValueError, match=r"to a tensor of shape \(N, C\)"):
        fisher_trace(flat, x)


def test_training_mode_is_refused_and_kept():
    model, x = make_case("cnn")
    model.train()
    with pytest.raises(ValueError, match=r"module '1' \(BatchNorm2d\) is in training mode.*model.eval\(\)"):
        fisher_trace(model, x)
    assert model.training and model[1].training
    dropout = nn.Sequential(nn.Linear(6, 4), nn.Dropout(0.5)).double()
    with pytest.raises(ValueError, match=r"module '1' \(Dropout\)"):
        fisher_quadratic_form(dropout, torch.randn(2, 6, dtype=torch.float64))


@pytest.mark.parametrize(("output", "match"), [("probs", "not a probability vector"), ("log_probs", "logsumexp")])
def test_output_kind_mismatch(mlp, output, match):
    model, x = mlp
    with pytest.raises(ValueError, match=match):
        fisher_trace(model, x, output=output)


def test_inputs_with_unusual_strides_give_the_same_numbers():
    """A numpy slice with a stride-0 / odd-stride size-1 axis used to break the Gram code's views."""
    import numpy as np

    from art_fisher.models import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN().eval()
    base = np.random.default_rng(0).random((6, 8, 8), dtype=np.float32)
    odd = torch.from_numpy(np.broadcast_to(base[:, None], (6, 1, 8, 8)))  # stride 0 on the channel axis
    fortran = torch.from_numpy(np.asfortranarray(base[:, None]))
    canonical = odd.clone(memory_format=torch.contiguous_format)
    for fn in (fisher_trace, fisher_quadratic_form, fisher_max_eigenvalue, fisher_sensitivity):
        expected = fn(model, canonical[:4])
        for x in (odd[:4], fortran[:4]):
            torch.testing.assert_close(fn(model, x), expected, rtol=1e-5, atol=1e-7)
