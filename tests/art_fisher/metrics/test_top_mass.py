"""The many-class option (``tau``, :mod:`art_fisher.metrics`) against dense float64 references.

Checked on every sample: the identity ``F − F_τ = q F_R`` (trace, quadratic form), the lower bound
``M(F_τ) ≤ M(F)`` and the error bound ``M(F) − M(F_τ) ≤ q D_R²`` (trace, λ_max, quadratic form); and,
statistically at a fixed seed, that the sampled estimate's error matches its standard error.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from art_fisher import metrics
from art_fisher.metrics._engine._network import FunctionalNet
from art_fisher.metrics._engine._recorder import find_coverage
from art_fisher.metrics._top_mass import TopMass, kept_classes
from art_fisher.metrics._trace import block_traces
from tests.art_fisher.metrics_cases import Dense
from tests.art_fisher.model_families import TinyMobileNetV2, TinyViT, randomise_norms

N_CLASSES = 20


def _model(name: str, seed: int = 0, sharpness: float = 4.0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = TinyMobileNetV2(width=4, n_classes=N_CLASSES) if name == "mobilenet" else TinyViT(n_classes=N_CLASSES)
    model = randomise_norms(model.double(), seed)
    head = model.classifier[1] if name == "mobilenet" else model.head
    with torch.no_grad():  # a spread of confidences, from nearly flat to peaked
        head.weight.mul_(sharpness)
    return model


def _x(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _reference(model: torch.nn.Module, x: torch.Tensor, tau: float) -> dict[str, torch.Tensor]:
    """Per sample: exact trace, λ_max, quadratic form; q, tr F_R, vᵀF_R v/‖v‖², D_R² from dense Jacobians."""
    dense = Dense(model)
    out: dict[str, list[float]] = {k: [] for k in ("trace", "lam", "quad", "q", "tr_rest", "quad_rest", "diam2")}
    z = model(x)
    order, k, _q = kept_classes(z, tau)
    for i in range(x.shape[0]):
        g = dense.jacobian(x[i])  # (C, P): rows ∇θ log p_c
        p = dense.probs(x[i])
        fisher = torch.einsum("c,cp,cq->pq", p, g, g)
        rest = order[i, int(k[i]) :]
        q = p[rest].sum()
        r = p[rest] / q if len(rest) else p[rest]
        gr = g[rest] - (r @ g[rest]) if len(rest) else g[rest]  # ∇log p(c|R)
        f_rest = torch.einsum("c,cp,cq->pq", r, gr, gr) if len(rest) else torch.zeros_like(fisher)
        v = g[int(p.argmax())]
        v = v / v.norm()
        out["trace"].append(fisher.trace())
        out["lam"].append(torch.linalg.eigvalsh(fisher)[-1])
        out["quad"].append(v @ fisher @ v)
        out["q"].append(q)
        out["tr_rest"].append(f_rest.trace())
        out["quad_rest"].append(v @ f_rest @ v)
        out["diam2"].append(torch.cdist(g[rest], g[rest]).max() ** 2 if len(rest) else torch.tensor(0.0))
    return {key: torch.stack([torch.as_tensor(t, dtype=torch.float64) for t in vals]) for key, vals in out.items()}


@pytest.mark.parametrize("name", ["mobilenet", "vit"])
@pytest.mark.parametrize("tau", [0.05, 0.3])
def test_top_mass_identity_lower_bound_and_error_bound_on_every_sample(name, tau):
    model = _model(name)
    x = _x(6)
    ref = _reference(model, x, tau)
    assert (ref["q"] <= tau + 1e-12).all()
    assert (ref["q"] > 0).any(), "the case must drop some classes"
    trace = metrics.fisher_trace(model, x, tau=tau)
    lam = metrics.fisher_max_eigenvalue(model, x, tau=tau)
    quad = metrics.fisher_quadratic_form(model, x, tau=tau)
    # the exact gap F − F_τ = q F_R
    torch.testing.assert_close(trace, ref["trace"] - ref["q"] * ref["tr_rest"], rtol=1e-8, atol=1e-12)
    torch.testing.assert_close(quad, ref["quad"] - ref["q"] * ref["quad_rest"], rtol=1e-8, atol=1e-12)
    slack = 1e-9 * ref["trace"]
    for approx, exact in ((trace, ref["trace"]), (lam, ref["lam"]), (quad, ref["quad"])):
        assert (approx <= exact + slack).all()  # certain lower bound
        assert (exact - approx <= ref["q"] * ref["diam2"] + slack).all()  # the bound on the dropped part
        assert (exact - approx <= tau * ref["diam2"] + slack).all()
    # block traces sum to the trace; the exact default is untouched
    blocks = metrics.fisher_block_traces(model, x, tau=tau).values
    torch.testing.assert_close(blocks.sum(1), trace, rtol=1e-10, atol=0)
    torch.testing.assert_close(metrics.fisher_trace(model, x), ref["trace"], rtol=1e-8, atol=0)


def test_top_mass_hooks_match_torch_func_and_chunks_of_different_widths():
    model = _model("mobilenet")
    x = _x(7)
    net = FunctionalNet(model, [n for n, _ in model.named_parameters()], "logits")
    coverage = find_coverage(net, x)
    assert not coverage.rest  # grouped and depthwise convolutions take the hook engine
    spec = TopMass(0.1)
    hooks = block_traces(net, coverage, x, chunk_size=2, classes=spec)  # chunks keep different numbers of classes
    func = block_traces(net, coverage.without_hooks(), x, chunk_size=None, classes=spec)
    torch.testing.assert_close(hooks, func, rtol=1e-10, atol=1e-14)


def test_kept_classes_is_the_smallest_set_holding_one_minus_tau():
    z = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.97, 0.01, 0.01, 0.01]], dtype=torch.float64))
    order, k, q = kept_classes(z, 0.1)
    assert k.tolist() == [3, 1]
    torch.testing.assert_close(q, torch.tensor([0.05, 0.03], dtype=torch.float64))
    assert order[0, :3].tolist() == [0, 1, 2]


def test_tau_small_enough_is_exact():
    model = _model("mobilenet", sharpness=1.0)
    x = _x(3)
    torch.testing.assert_close(
        metrics.fisher_trace(model, x, tau=1e-12), metrics.fisher_trace(model, x), rtol=1e-9, atol=0
    )


def test_sampled_estimate_is_unbiased_with_its_stated_standard_error():
    model = _model("mobilenet", sharpness=2.0)
    x = _x(60, seed=3)
    tau, m = 0.5, 4
    exact = metrics.fisher_trace(model, x)
    est = metrics.fisher_trace_estimate(model, x, tau=tau, samples=m, seed=0)
    assert (est.dropped_mass <= tau).all() and (est.dropped_mass > 0).all()
    assert (est.lower <= exact * (1 + 1e-9)).all() and (est.estimate >= est.lower).all()
    torch.testing.assert_close(est.lower, metrics.fisher_trace(model, x, tau=tau), rtol=1e-10, atol=0)
    # over the samples: the mean error within 3 of its standard error, and squared errors the size of
    # the stated variances (the ratio of means is near 1; 0.4-2.5 leaves room for 60 heavy-tailed draws)
    err = est.estimate - exact
    assert abs(err.mean()) <= 3 * math.sqrt((est.stderr**2).sum()) / len(err)
    ratio = (err**2).mean() / (est.stderr**2).mean()
    assert 0.4 < ratio < 2.5, ratio
    # many draws: the error shrinks as 1/√m
    many = metrics.fisher_trace_estimate(model, x, tau=tau, samples=256, seed=1)
    assert ((many.estimate - exact).abs() / exact).max() < ((err.abs() / exact).max())
    # a fixed seed gives the same numbers
    again = metrics.fisher_trace_estimate(model, x, tau=tau, samples=m, seed=0)
    assert torch.equal(again.estimate, est.estimate)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"tau": 0.0}, ValueError, "tau must be a float in"),
        ({"tau": 1.5}, ValueError, "tau must be a float in"),
        ({"tau": "0.1"}, TypeError, "tau must be a float"),
        ({"tau": 0.1, "method": "finite_difference"}, ValueError, "tau needs method"),
    ],
)
def test_tau_argument_errors(kwargs, error, match):
    model = _model("mobilenet")
    with pytest.raises(error, match=match):
        metrics.fisher_trace(model, _x(2), **kwargs)


def test_tau_refuses_predicted_vs_rest_and_the_estimate_checks_its_arguments():
    model = _model("mobilenet")
    with pytest.raises(ValueError, match='tau applies to classes="all"'):
        metrics.fisher_quadratic_form(model, _x(2), tau=0.1, classes="predicted_vs_rest")
    with pytest.raises(ValueError, match="samples must be an int >= 2"):
        metrics.fisher_trace_estimate(model, _x(2), samples=1)
    with pytest.raises(TypeError, match="seed must be an int"):
        metrics.fisher_trace_estimate(model, _x(2), seed=0.5)


def test_detector_and_features_pass_tau_to_every_metric_but_the_sensitivity(digits_cnn, tmp_path):
    from art_fisher.detection._detector import FisherInformationDetector
    from art_fisher.detection._estimators import FisherFeatures

    clf = digits_cnn.classifier
    x = digits_cnn.x_test[:6].astype(np.float32)
    names = ("trace", "quadratic_form", "max_eigenvalue", "block_traces", "sensitivity")
    features = FisherFeatures(clf, names, tau=0.3).fit(x)
    assert features.get_params()["tau"] == 0.3
    got = features.transform(x)
    exact = FisherFeatures(clf, names).fit(x).transform(x)
    xt = torch.as_tensor(x)
    model = clf.model.eval()
    want = [
        metrics.fisher_trace(model, xt, tau=0.3),
        metrics.fisher_quadratic_form(model, xt, tau=0.3),
        metrics.fisher_max_eigenvalue(model, xt, tau=0.3),
    ]
    np.testing.assert_allclose(got[:, :3], torch.stack(want, 1).numpy(), rtol=1e-4)
    assert (got[:, 0] <= exact[:, 0] * (1 + 1e-5)).all()
    np.testing.assert_allclose(got[:, -4:], exact[:, -4:], rtol=1e-5)  # the sensitivity is exact
    with pytest.raises(ValueError, match='tau applies to classes="all"'):
        FisherInformationDetector(clf, tau=0.1, classes="predicted_vs_rest")
    with pytest.raises(ValueError, match="tau must be a float in"):
        FisherInformationDetector(clf, tau=2.0)
    det = FisherInformationDetector(clf, metrics=("trace",), tau=0.2)
    det.fit(np.concatenate([x, x[::-1] * 0.5]), np.r_[np.zeros(6), np.ones(6)])
    det.save(tmp_path / "det.skops")
    assert FisherInformationDetector.load(tmp_path / "det.skops", clf).tau == 0.2


def test_evaluation_checks_tau_and_hands_it_to_the_fisher_detectors(digits_cnn, tmp_path):
    from art_fisher.evaluation import prepare
    from art_fisher.evaluation.detectors._base import RunContext
    from art_fisher.evaluation.detectors._fisher import FisherRun

    with pytest.raises(ValueError, match="tau must be a float in"):
        prepare(output_dir=tmp_path / "a", tau=1.0)
    assert prepare(output_dir=tmp_path / "b", tau=0.01).tau == 0.01
    ctx = RunContext(
        classifier=digits_cnn.classifier,
        model=digits_cnn.classifier.model,
        x_background=digits_cnn.x_train[:4],
        seed=0,
        device=torch.device("cpu"),
        batch_size=8,
        target_fpr=0.05,
        progress=False,
        tau=0.01,
    )
    assert FisherRun(ctx, ("trace",)).detector.tau == 0.01


def test_estimate_with_a_cap_on_kept_classes_stays_unbiased():
    model = _model("mobilenet", sharpness=1.0)
    x = _x(60, seed=4)
    exact = metrics.fisher_trace(model, x)
    est = metrics.fisher_trace_estimate(model, x, tau=1e-3, max_kept=3, samples=6, seed=2)
    assert (est.kept <= 3).all() and (est.dropped_mass > 1e-3).all()
    assert (est.lower <= exact * (1 + 1e-9)).all()
    err = est.estimate - exact
    assert abs(err.mean()) <= 3 * math.sqrt((est.stderr**2).sum()) / len(err)
    assert 0.4 < (err**2).mean() / (est.stderr**2).mean() < 2.5
    with pytest.raises(ValueError, match="max_kept must be None or an int >= 1"):
        metrics.fisher_trace_estimate(model, x[:2], max_kept=0)


def test_top_mass_trace_input_gradient_matches_finite_differences():
    """With create_graph the coarsened trace is differentiable in x (the kept set is locally constant)."""
    model = _model("vit")
    for block in model.blocks:
        block.attn.fused = False  # the fused CPU attention kernel has no second derivative
    x = _x(2, seed=5).requires_grad_(True)
    value = metrics.fisher_trace(model, x, tau=0.3, create_graph=True)
    torch.testing.assert_close(value.detach(), metrics.fisher_trace(model, x.detach(), tau=0.3), rtol=1e-10, atol=0)
    (grad,) = torch.autograd.grad(value.sum(), x)
    d = torch.randn(x.shape, dtype=x.dtype, generator=torch.Generator().manual_seed(0))
    eps = 1e-6
    with torch.no_grad():
        up = metrics.fisher_trace(model, x.detach() + eps * d, tau=0.3).sum()
        down = metrics.fisher_trace(model, x.detach() - eps * d, tau=0.3).sum()
    torch.testing.assert_close((grad * d).sum(), (up - down) / (2 * eps), rtol=1e-5, atol=0)
