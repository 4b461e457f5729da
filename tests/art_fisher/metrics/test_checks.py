"""Bad input to the metrics raises a clear error naming the argument, before any computation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from art_fisher import fisher_max_eigenvalue, fisher_quadratic_form, fisher_sensitivity, fisher_trace
from tests.art_fisher.metrics_cases import make_case

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
        ({"chunk_size": 0}, ValueError, "chunk_size must be None or an int >= 1"),
        ({"chunk_size": 2.0}, TypeError, "chunk_size must be None or an int >= 1; got 2.0"),
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
        ({"fd_step": 0.0}, ValueError, "fd_step must be a finite number > 0"),
        ({"fd_step": -1e-3}, ValueError, "fd_step must be a finite number > 0"),
        ({"fd_step": "1e-3"}, TypeError, "fd_step must be a finite number > 0; got '1e-3'"),
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
    with pytest.raises(ValueError, match='does not support direction="top_eigenvector"'):
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

    from art_fisher.models._architectures import SmallCNN

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


def _linear32():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3)).eval(), torch.randn(5, 4)


@pytest.mark.parametrize("fn", METRICS)
def test_non_finite_output_in_any_sample_names_the_samples(fn):
    model, x = _linear32()
    x = x.clone()
    x[1] *= 1e38  # huge but finite logits: float32 cannot resolve a unit there (every metric, sensitivity included)
    x[3] *= -1e38
    with pytest.raises(ValueError, match=r"logits exceed 8.39e\+06 in magnitude for samples \[1, 3\]"):
        fn(model, x)
    x = x / 1e8  # now the logits themselves overflow to inf in samples 1 and 3
    with torch.no_grad():
        model[0].weight.mul_(1e12)
    with pytest.raises(ValueError, match=r"the model's output is not finite .* for samples \[1, 3\]"):
        fn(model, x)
    with pytest.raises(ValueError, match=r"for samples \[1, 3\]"):
        fn(model, x, chunk_size=2)  # found in the first chunk, every such sample named
    if fn is not fisher_max_eigenvalue:
        with pytest.raises(ValueError, match=r"samples \[1, 3\]"):
            fn(model, x, method="finite_difference")


def test_non_finite_results_name_the_samples():
    from art_fisher._checks import check_finite_result

    values = torch.tensor([1.0, float("nan"), 2.0, float("inf")])
    with pytest.raises(ValueError, match=r"fisher_trace is not finite for samples \[1, 3\]"):
        check_finite_result(values, "fisher_trace")
    maps = torch.zeros(3, 1, 2, 2)
    maps[2, 0, 1, 1] = float("nan")
    with pytest.raises(ValueError, match=r"samples \[2\]"):
        check_finite_result(maps, "fisher_sensitivity")


class ProbsByHand(nn.Module):
    """Probabilities computed without a softmax call (the metrics cannot read through to logits)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.body(x)
        e = torch.exp(z - z.amax(1, keepdim=True))
        return e / e.sum(1, keepdim=True)


@pytest.mark.parametrize("wrap", ["softmax", "by_hand"])
def test_zero_probability_under_probs_output(wrap):
    model, x = make_case("tanh")
    with torch.no_grad():
        model[2].bias[2] = -1000.0  # p_2 underflows to exactly 0 in float64
    probs = nn.Sequential(model, nn.Softmax(dim=1)) if wrap == "softmax" else ProbsByHand(model)
    assert bool((probs(x)[:, 2] == 0).all())
    for fn in METRICS:
        got = fn(probs, x, output="probs")
        want = fn(model, x)  # logits: the zero class's term p_c ‖∇ log p_c‖² is below rounding
        assert bool(torch.isfinite(got).all())
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-300)
    label = torch.tensor([2, 2, 0, 2])
    if wrap == "by_hand":  # only probabilities are known: ∇θ log p_2 does not exist
        with pytest.raises(ValueError, match=r"probability is exactly 0: samples \[0, 1, 3\]"):
            fisher_quadratic_form(probs, x, output="probs", direction="label", y=label)
    else:  # read through to the logits: log p_2 is a smooth function of them
        got = fisher_quadratic_form(probs, x, output="probs", direction="label", y=label)
        torch.testing.assert_close(got, fisher_quadratic_form(model, x, direction="label", y=label), rtol=1e-9, atol=0)


def test_frozen_model_uses_every_parameter_and_stays_frozen():
    model, x = make_case("tanh")
    all_params = fisher_trace(model, x)
    model.requires_grad_(False)
    for fn in METRICS:
        assert bool(torch.isfinite(fn(model, x)).all())
    torch.testing.assert_close(fisher_trace(model, x), all_params, rtol=1e-12, atol=0)
    torch.testing.assert_close(
        fisher_trace(model, x, params=["2.weight"]),
        fisher_trace(model.requires_grad_(True), x, params=["2.weight"]),
        rtol=1e-12,
        atol=0,
    )
    model.requires_grad_(False)
    fisher_sensitivity(model, x)
    assert not any(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())
    model[0].weight.requires_grad_(True)  # some require grad: only those are selected by default
    torch.testing.assert_close(fisher_trace(model, x), fisher_trace(model, x, params=["0.weight"]), rtol=0, atol=0)
    assert [p.requires_grad for p in model.parameters()] == [True, False, False, False]


def test_create_graph_arguments():
    model, x = make_case("tanh")
    with pytest.raises(TypeError, match="create_graph must be True or False"):
        fisher_trace(model, x, create_graph=1)
    with pytest.raises(ValueError, match="create_graph=True needs method='exact'"):
        fisher_quadratic_form(model, x, create_graph=True, method="finite_difference")


class _FunctionalDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 32), nn.Linear(32, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.dropout(torch.relu(self.fc1(x)), p=0.5, training=True))


def test_output_probe_calls_the_model_twice_unless_the_calls_disagree():
    """The probe's third call (the first sample alone again) only runs to tell randomness from batch statistics."""
    from art_fisher._checks import probe_output

    calls = []
    model = nn.Sequential(nn.Linear(6, 3)).eval()
    model.register_forward_pre_hook(lambda _m, inputs: calls.append(inputs[0].shape[0]))
    assert probe_output(model, torch.rand(5, 6), "logits") == 3
    assert calls == [1, 4]
    calls.clear()
    probe_output(model, torch.rand(1, 6), "logits")
    assert calls == [1, 1]
    calls.clear()
    dropout = _FunctionalDropout().eval()
    dropout.register_forward_pre_hook(lambda _m, inputs: calls.append(inputs[0].shape[0]))
    with pytest.raises(ValueError, match="differs between two calls in eval mode"):
        probe_output(dropout, torch.rand(4, 6), "logits")
    assert calls == [1, 4, 1]


def test_functional_train_mode_dropout_is_detected():
    model, x = _FunctionalDropout().eval(), torch.rand(4, 6)
    for metric in (fisher_trace, fisher_quadratic_form, fisher_sensitivity):
        with pytest.raises(ValueError, match="differs between two calls in eval mode"):
            metric(model, x)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_says_unsupported(dtype):
    """Before: torch's NotImplementedError: linalg_eigh_cpu from the trace."""
    model = nn.Sequential(nn.Linear(4, 3)).to(dtype).eval()
    with pytest.raises(TypeError, match=rf"half precision is not supported \(x is {dtype}\).*model.float\(\)"):
        fisher_trace(model, torch.rand(2, 4, dtype=dtype))
    with pytest.raises(TypeError, match=r"half precision is not supported \(parameter '0.weight'"):
        fisher_trace(model, torch.rand(2, 4))


# ------------------------------------------------------------ probability outputs taken for logits
class _ExpOverSum(nn.Module):
    def forward(self, z):
        e = torch.exp(z - z.max(1, keepdim=True).values)
        return e / e.sum(1, keepdim=True)


class _FunctionalSoftmax(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc, self.dim = nn.Linear(6, 5), dim

    def forward(self, x):
        return nn.functional.softmax(self.fc(x), dim=self.dim)


def _prob_models():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))
    return {
        "nn.Softmax": nn.Sequential(base, nn.Softmax(1)),
        "Softmax(dim=-1)": nn.Sequential(base, nn.Softmax(dim=-1)),
        "exp over sum": nn.Sequential(base, _ExpOverSum()),
        "F.softmax": _FunctionalSoftmax(-1),
        "exp(log_softmax)": nn.Sequential(base, nn.LogSoftmax(1), _Exp()),
        "two classes": nn.Sequential(nn.Linear(6, 2), nn.Softmax(1)),
    }


class _Exp(nn.Module):
    def forward(self, z):
        return z.exp()


@pytest.mark.parametrize("name", list(_prob_models()))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_probability_outputs_taken_for_logits_are_refused(name, dtype):
    """Before: nn.Sequential(net, nn.Softmax(1)) with the default output='logits' gave a trace ~95x too small."""
    from art_fisher.metrics import fisher_trace_estimate

    model = _prob_models()[name].to(dtype).eval()
    x = torch.rand(5, 6, dtype=dtype)
    for metric in (*METRICS, fisher_trace_estimate):
        with pytest.raises(ValueError, match=r"output='logits' but the model's outputs .* probability vectors"):
            metric(model, x)
    # the same model is measured when its output is declared
    assert bool(torch.isfinite(fisher_trace(model, x, output="probs")).all())


def test_logits_and_log_probs_that_are_not_probabilities_pass():
    torch.manual_seed(0)
    base = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4)).double().eval()
    x = torch.rand(5, 6, dtype=torch.float64)
    small_positive = nn.Sequential(base, nn.Sigmoid()).eval()  # in [0, 1] but rows do not sum to 1
    log_probs = nn.Sequential(base, nn.LogSoftmax(1)).eval()
    torch.testing.assert_close(fisher_trace(log_probs, x), fisher_trace(base, x), rtol=1e-10, atol=0)
    assert bool(torch.isfinite(fisher_trace(small_positive, x)).all())


# --------------------------------------------- layers that use batch statistics or change state
def _norm_net(norm: nn.Module, *, train: bool) -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(6, 8), nn.Unflatten(1, (2, 4)), norm, nn.Flatten(), nn.Linear(8, 3))
    net.double().eval()
    norm.train(train)
    return net


_REFUSED_NORMS = {
    "BatchNorm1d no stats, eval": (lambda: nn.BatchNorm1d(2, track_running_stats=False), False),
    "BatchNorm1d plain no stats, eval": (lambda: nn.BatchNorm1d(2, affine=False, track_running_stats=False), False),
    "BatchNorm1d train": (lambda: nn.BatchNorm1d(2), True),
    "SyncBatchNorm no stats, eval": (lambda: nn.SyncBatchNorm(2, track_running_stats=False), False),
    "SyncBatchNorm train": (lambda: nn.SyncBatchNorm(2), True),
    "LazyBatchNorm1d uninitialised, eval": (nn.LazyBatchNorm1d, False),
    "InstanceNorm1d running stats, train": (lambda: nn.InstanceNorm1d(2, track_running_stats=True), True),
    "InstanceNorm1d affine running stats, train": (
        lambda: nn.InstanceNorm1d(2, affine=True, track_running_stats=True),
        True,
    ),
    "LazyInstanceNorm1d running stats, train": (lambda: nn.LazyInstanceNorm1d(track_running_stats=True), True),
}


@pytest.mark.parametrize("name", list(_REFUSED_NORMS))
def test_normalisation_by_batch_statistics_or_with_side_effects_is_refused(name):
    """Before: BatchNorm(track_running_stats=False) in eval depended on chunk_size; InstanceNorm with running
    statistics in train mode changed them (its affine variant raised a functorch error)."""
    make, train = _REFUSED_NORMS[name]
    net = _norm_net(make(), train=train)

    def state():
        return {k: v if nn.parameter.is_lazy(v) else v.clone() for k, v in net.state_dict().items()}

    before = state()
    x = torch.rand(6, 6, dtype=torch.float64)
    for metric in METRICS:
        with pytest.raises(ValueError, match=r"model: module '2' \(\w+\) .*depends on that input alone"):
            metric(net, x)
    after = state()
    assert before.keys() == after.keys()
    assert all(nn.parameter.is_lazy(after[k]) or torch.equal(before[k], after[k]) for k in before)
    assert net[2].training is train


@pytest.mark.parametrize(
    ("make", "train"),
    [
        (lambda: nn.BatchNorm1d(2), False),
        (lambda: nn.InstanceNorm1d(2), True),
        (lambda: nn.InstanceNorm1d(2, affine=True), True),
        (lambda: nn.InstanceNorm1d(2, track_running_stats=True), False),
        (lambda: nn.GroupNorm(1, 2), True),
    ],
)
def test_per_sample_normalisation_is_accepted_and_chunk_independent(make, train):
    net = _norm_net(make(), train=train)
    x = torch.rand(6, 6, dtype=torch.float64)
    torch.testing.assert_close(fisher_trace(net, x), fisher_trace(net, x, chunk_size=1), rtol=1e-10, atol=0)


class _RunningMean(nn.Module):
    """Updates a buffer on every call, whatever the mode."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)
        self.register_buffer("seen", torch.zeros(6))

    def forward(self, x):
        self.seen += x.detach().mean(0)
        return self.fc(x)


class _BatchCentred(nn.Module):
    """Subtracts the batch mean: one sample's output depends on the others."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 3)

    def forward(self, x):
        return self.fc(x - x.mean(0, keepdim=True))


def test_custom_modules_with_side_effects_or_batch_mixing_are_refused():
    x = torch.rand(5, 6)
    stateful = _RunningMean().eval()
    for metric in METRICS:
        with pytest.raises(ValueError, match=r"changed its buffers \['seen'\].*buffers were restored"):
            metric(stateful, x)
        assert float(stateful.seen.abs().max()) == 0.0
        with pytest.raises(ValueError, match="differs from its output in a batch"):
            metric(_BatchCentred().eval(), x)


def test_batch_mixing_is_refused_in_chunks_of_one_sample_too():
    """The check of x[0]'s row in a batch waits for the first chunk; a chunk of one sample has no such row,
    so the check's own batch call runs then."""
    x = torch.rand(5, 6)
    for metric in METRICS:
        with pytest.raises(ValueError, match="differs from its output in a batch"):
            metric(_BatchCentred().eval(), x, chunk_size=1)


def test_the_hook_engine_calls_the_model_once_before_its_chunks():
    """The output checks' call of x[0] is the hook engine's probe pass, and x[0]'s row in a batch is checked
    on the first chunk: the model runs on x[:1] once, then on the chunks (before: x[:1], x[:4], x[:1] again
    for the probe, then the chunks)."""
    from art_fisher.metrics import fisher_trace_estimate

    calls: list[int] = []
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).eval()
    model.register_forward_pre_hook(lambda _m, inputs: calls.append(inputs[0].shape[0]))
    x = torch.rand(5, 6)
    for metric in (fisher_trace, fisher_max_eigenvalue, fisher_quadratic_form):
        calls.clear()
        metric(model, x)
        assert calls == [1, 5], metric.__name__
        calls.clear()
        metric(model, x, chunk_size=2)
        assert calls == [1, 2, 2, 1], metric.__name__
    calls.clear()
    fisher_trace_estimate(model, x, tau=0.1)
    assert calls == [1, 5]
    calls.clear()
    fisher_trace(model, x, method="finite_difference")  # no hooks: the probe's own batch call
    assert calls[:2] == [1, 4]


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tau": 10**400}, ValueError, r"tau must be a float in \(0, 1\)"),
        ({"tau": -(10**400)}, ValueError, r"tau must be a float in \(0, 1\)"),
        ({"seed": 2**64}, ValueError, r"seed must be an int from 0 to 2\*\*63 - 1"),
        ({"seed": -1}, ValueError, r"seed must be an int from 0 to 2\*\*63 - 1"),
    ],
)
def test_trace_estimate_refuses_huge_integers_with_a_message(kwargs, error, match):
    """Before: OverflowError from float(10**400), torch's manual_seed(2**64) or a clamp at 10**30."""
    from art_fisher.metrics import fisher_trace_estimate

    model, x = make_case("mlp")
    with pytest.raises(error, match=match):
        fisher_trace_estimate(model, x, **{"tau": 0.1, **kwargs})


def test_trace_estimate_takes_a_max_kept_beyond_the_class_count():
    from art_fisher.metrics import fisher_trace_estimate

    model, x = make_case("mlp")
    capped = fisher_trace_estimate(model, x, tau=0.1, max_kept=10**30, seed=2**63 - 1)
    uncapped = fisher_trace_estimate(model, x, tau=0.1, seed=2**63 - 1)
    torch.testing.assert_close(capped.estimate, uncapped.estimate, rtol=0, atol=0)
