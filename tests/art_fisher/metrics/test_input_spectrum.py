"""``fisher_input_spectrum`` against a dense float64 eigendecomposition of ``Jₓᵀ S Jₓ``.

The models differ from those the code was written with: other activations (tanh, GELU, ELU, softplus),
pooling layers (average, max, adaptive), class counts 2, 3, 10 and 17, inputs of other shapes.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from art_fisher import fisher_input_spectrum


def _dense(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (N, D), descending, and eigenvectors (N, D, D) (columns) of the D × D matrix G(x)."""
    jac = torch.func.vmap(torch.func.jacrev(lambda xi: model(xi.unsqueeze(0))[0]))(x).flatten(2)  # (N, C, D)
    p = torch.softmax(model(x), -1)
    s = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    g = jac.transpose(1, 2) @ s @ jac
    evals, evecs = torch.linalg.eigh(g)
    return evals.flip(-1), evecs.flip(-1)


def _mlp(d: int, c: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 9), nn.Tanh(), nn.Linear(9, 7), nn.Softplus(), nn.Linear(7, c))


def _conv_avg(c: int) -> nn.Module:  # input (1, 6, 6)
    return nn.Sequential(nn.Conv2d(1, 3, 3), nn.GELU(), nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, c))


def _conv_max(c: int) -> nn.Module:  # input (2, 5, 7)
    return nn.Sequential(nn.Conv2d(2, 4, 2), nn.ELU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(24, c))


def _conv_adaptive(c: int) -> nn.Module:  # input (3, 8, 8)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.Softplus(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 8),
        nn.Tanh(), nn.Linear(8, c),
    )  # fmt: skip


CASES = {
    "mlp_tanh_softplus_c2": (lambda: _mlp(5, 2), (5,)),
    "mlp_tanh_softplus_c17": (lambda: _mlp(11, 17), (11,)),
    "conv_gelu_avgpool_c3": (lambda: _conv_avg(3), (1, 6, 6)),
    "conv_elu_maxpool_c10": (lambda: _conv_max(10), (2, 5, 7)),
    "conv_softplus_adaptive_c17": (lambda: _conv_adaptive(17), (3, 8, 8)),
}


def _case(name: str, n: int = 4, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(seed)
    build, shape = CASES[name]
    model = build().double().eval()
    return model, 2 * torch.randn(n, *shape, dtype=torch.float64)


@pytest.mark.parametrize("name", list(CASES))
def test_matches_dense_float64_eigendecomposition(name):
    model, x = _case(name)
    n_classes = model(x[:1]).shape[1]
    k = min(n_classes - 1, 4)
    values, vectors = fisher_input_spectrum(model, x, k=k)
    want_values, want_vectors = _dense(model, x)
    assert values.shape == (len(x), k) and vectors.shape == (len(x), k, *x.shape[1:])
    scale = want_values[:, :1]
    torch.testing.assert_close(values / scale, want_values[:, :k] / scale, rtol=0, atol=1e-8)
    got = vectors.flatten(2)  # (N, k, D)
    for i in range(k):
        ref = want_vectors[:, :, i]
        sign = torch.sign((got[:, i] * ref).sum(1, keepdim=True))
        torch.testing.assert_close(got[:, i] * sign, ref, rtol=0, atol=1e-8)
    torch.testing.assert_close(got @ got.transpose(1, 2), torch.eye(k, dtype=x.dtype).expand(len(x), k, k))


def test_all_nonzero_eigenvalues_and_their_sum_is_the_trace():
    model, x = _case("conv_elu_maxpool_c10")
    values = fisher_input_spectrum(model, x, k=9, vectors=False).values
    assert bool((values[:, :-1] >= values[:, 1:]).all())
    want_values, _ = _dense(model, x)
    torch.testing.assert_close(values.sum(1), want_values.sum(1), rtol=1e-10, atol=0)


def test_k_beyond_the_rank_is_refused():
    model, x = _case("conv_gelu_avgpool_c3")
    with pytest.raises(ValueError, match=r"k must be in \[1, 2\].*got k=3"):
        fisher_input_spectrum(model, x, k=3)
    with pytest.raises(TypeError, match="k must be a positive int"):
        fisher_input_spectrum(model, x, k=1.0)
    torch.manual_seed(0)
    narrow = nn.Sequential(nn.Linear(3, 8), nn.Tanh(), nn.Linear(8, 10)).double()  # D = 3 < C - 1
    with pytest.raises(ValueError, match=r"min\(9, 3\) = 3"):
        fisher_input_spectrum(narrow, torch.randn(2, 3, dtype=torch.float64), k=4)


def test_zero_eigenvalues_are_zero_with_zero_vectors():
    torch.manual_seed(1)  # the input reaches the logits through one number: G has rank 1
    model = nn.Sequential(nn.Linear(6, 1), nn.Tanh(), nn.Linear(1, 5)).double()
    x = torch.randn(3, 6, dtype=torch.float64)
    values, vectors = fisher_input_spectrum(model, x, k=4)
    assert bool((values[:, 0] > 0).all()) and bool((values[:, 1:] == 0).all())
    assert bool((vectors[:, 1:] == 0).all())
    direction = model[0].weight[0] / model[0].weight[0].norm()
    torch.testing.assert_close((vectors[:, 0] @ direction).abs(), torch.ones(3, dtype=x.dtype))


def test_repeated_eigenvalue_gets_an_orthonormal_basis_of_its_eigenspace():
    # logits z = A x with orthonormal rows scaled equally and p uniform (zero bias, x = 0): G = (1/C) Aᵀ(I − 11ᵀ/C)A
    c, d = 4, 6
    a = torch.linalg.qr(torch.randn(d, c, dtype=torch.float64, generator=torch.Generator().manual_seed(0)))[0].T
    model = nn.Linear(d, c, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(a)
    values, vectors = fisher_input_spectrum(model, torch.zeros(1, d, dtype=torch.float64), k=3)
    torch.testing.assert_close(values, torch.full((1, 3), 1 / c, dtype=torch.float64))
    g = a.T @ (torch.eye(c, dtype=torch.float64) / c - 1 / c**2) @ a
    v = vectors[0]
    torch.testing.assert_close(v @ v.T, torch.eye(3, dtype=torch.float64))
    torch.testing.assert_close(g @ v.T, v.T / c)


@pytest.mark.parametrize("output", ["log_probs", "probs"])
def test_outputs_chunks_and_float32(output):
    model, x = _case("conv_softplus_adaptive_c17", n=5)
    ref = fisher_input_spectrum(model, x, k=3)
    head = nn.LogSoftmax(-1) if output == "log_probs" else nn.Softmax(-1)
    other = fisher_input_spectrum(nn.Sequential(model, head), x, k=3, output=output, chunk_size=2)
    torch.testing.assert_close(other.values, ref.values, rtol=1e-10, atol=0)
    torch.testing.assert_close((other.vectors * ref.vectors).flatten(2).sum(-1).abs(), torch.ones(5, 3, dtype=x.dtype))
    single = fisher_input_spectrum(model.float(), x.float(), k=1, chunk_size=3).values
    torch.testing.assert_close(single.double(), ref.values[:, :1], rtol=1e-4, atol=0)


def test_model_left_as_it_was_and_eval_mode_required():
    model = nn.Sequential(nn.Linear(4, 6), nn.Dropout(0.5), nn.Tanh(), nn.Linear(6, 3)).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="training mode"):
        fisher_input_spectrum(model, x)
    model.eval()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    fisher_input_spectrum(model, x, k=2)
    assert all(torch.equal(before[n], p) for n, p in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters()) and not model.training
    assert x.grad is None and not x.requires_grad


def test_bad_arguments_refused_before_work():
    model, x = _case("mlp_tanh_softplus_c2")
    with pytest.raises(ValueError, match="output must be one of"):
        fisher_input_spectrum(model, x, output="scores")
    with pytest.raises(TypeError, match="vectors must be True or False"):
        fisher_input_spectrum(model, x, vectors=1)
    with pytest.raises(ValueError, match="chunk_size"):
        fisher_input_spectrum(model, x, chunk_size=0)
    with pytest.raises(ValueError, match="x must be finite"):
        fisher_input_spectrum(model, x * float("nan"))


def test_unusable_output_names_the_samples():
    _model, x = _case("mlp_tanh_softplus_c2")
    x = x.clone()
    x[2] = 1e300
    with pytest.raises(ValueError, match=r"samples \[2\]"):
        fisher_input_spectrum(nn.Linear(5, 3).double(), x)


def test_create_graph_gives_the_eigenvalues_input_gradient():
    model, x = _case("mlp_tanh_softplus_c17", n=2)
    x = x.requires_grad_(True)
    values = fisher_input_spectrum(model, x, k=2, vectors=False, create_graph=True).values
    grad = torch.autograd.grad(values[:, 0].sum(), x)[0]
    h = 1e-6
    direction = torch.randn_like(x)
    with torch.no_grad():
        up = fisher_input_spectrum(model, x + h * direction, k=1, vectors=False).values[:, 0]
        down = fisher_input_spectrum(model, x - h * direction, k=1, vectors=False).values[:, 0]
    torch.testing.assert_close((grad * direction).sum(1), (up - down) / (2 * h), rtol=1e-6, atol=1e-9)
    detached = fisher_input_spectrum(model, x, k=2, vectors=False).values
    torch.testing.assert_close(values.detach(), detached, rtol=1e-10, atol=0)
