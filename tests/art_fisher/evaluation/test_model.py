"""The evaluation's classifier: trained and cached, loaded from a state dict, non-finite models and caches refused."""

from __future__ import annotations

import pytest
import torch

from art_fisher.data._loaders import load_digits
from art_fisher.evaluation import (
    EvaluationResult,
    evaluate,
)
from art_fisher.evaluation import _model as model_cache
from art_fisher.models._architectures import SmallCNN

# --------------------------------------------------------------------- evaluation: models
# In-process training kept tiny where the cache is what is tested.
TINY = {"attacks": ["fgsm"], "detectors": ["max_softmax"], "n_samples": 12, "epochs": 2, "seed": 1}


def _numbers(result: EvaluationResult) -> list[tuple]:
    """Everything in the table except the timings."""
    keys = ("detector", "fit_attack", "attack", "roc_auc", "tpr", "fpr", "own_tpr", "own_fpr", "n_train", "n_test")
    return [tuple(row[k] for k in keys) for row in result.table]


def _digits_state(tmp_path, tamper):
    from art_fisher.models._architectures import SmallCNN

    torch.manual_seed(0)
    model = SmallCNN()
    state = model.state_dict()
    tamper(state)
    path = tmp_path / "model.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize(
    ("tamper", "match"),
    [
        (lambda s: s[next(k for k in s if k.endswith("weight"))].fill_(float("nan")), r"weights \[.*\] hold NaN"),
        (lambda s: [t.mul_(1e30) for k, t in s.items() if k.endswith("weight")], "outputs are not finite"),
    ],
)
def test_a_model_with_non_finite_outputs_is_refused_with_its_name(tmp_path, capsys, tamper, match):
    """Before: "clean test accuracy 0.1000", empty rows, exit status 0."""
    from art_fisher.cli import main

    path = _digits_state(tmp_path, tamper)
    assert main(["evaluate", "--model", str(path), "--output", str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"model {path}" in err and __import__("re").search(match, err), err
    assert not (tmp_path / "out").exists()


def test_a_cache_with_non_finite_weights_is_rebuilt(tmp_path):
    from art_fisher.evaluation import _model as model_cache
    from art_fisher.models._architectures import SmallCNN

    state = {k: v.clone() for k, v in SmallCNN().state_dict().items()}
    next(v for k, v in state.items() if k.endswith("weight")).fill_(float("inf"))
    path = tmp_path / "cache.pt"
    torch.save(
        {"format": model_cache.CACHE_FORMAT, "key": "k", "state_dict": state, "digest": model_cache._digest(state)},
        path,
    )
    with pytest.raises(ValueError, match="hold NaN or infinite values"):
        model_cache._read_cache(path, "k", SmallCNN())


def test_trained_model_is_cached_and_reloaded(tmp_path):
    first = evaluate(**TINY, output_dir=tmp_path)
    assert first.settings["model_status"] == "trained" and first.paths["model"].parent == tmp_path / "models"
    again = evaluate(**TINY, output_dir=tmp_path)
    assert again.settings["model_status"] == "cached" and again.timings["training"] == 0.0
    assert again.paths["model"] == first.paths["model"]
    assert _numbers(again) == _numbers(first)
    other = evaluate(**{**TINY, "seed": 2}, output_dir=tmp_path)
    assert other.settings["model_status"] == "trained" and other.paths["model"] != first.paths["model"]


def _corrupt(kind: str, path, data) -> None:
    if kind == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "flipped":  # a weight changed behind the cache's back
        payload = torch.load(path, weights_only=True)
        next(iter(payload["state_dict"].values())).view(-1)[0] += 1.0
        torch.save(payload, path)
    elif kind == "wrong_architecture":
        payload = torch.load(path, weights_only=True)
        payload["state_dict"] = SmallCNN(width=4).state_dict()
        payload["digest"] = model_cache._digest(payload["state_dict"])
        torch.save(payload, path)
    elif kind == "plain_state_dict":  # a bare state dict, without the cache's metadata
        torch.save(SmallCNN().state_dict(), path)


@pytest.mark.parametrize("kind", ["truncated", "empty", "flipped", "wrong_architecture", "plain_state_dict"])
def test_unusable_model_cache_is_rebuilt_with_a_warning(tmp_path, caplog, kind):
    data = load_digits(split="train")
    kwargs = {
        "arch": "small_cnn",
        "data": data,
        "epochs": 1,
        "seed": 0,
        "device": torch.device("cpu"),
        "output_dir": tmp_path,
        "progress": False,
    }
    first = model_cache.cached_model(**kwargs)
    assert first.status == "trained"
    _corrupt(kind, first.path, data)
    with caplog.at_level("WARNING", logger="art_fisher.evaluation._model"):
        rebuilt = model_cache.cached_model(**kwargs)
    assert rebuilt.status == "rebuilt" and str(first.path) in caplog.text and "unusable" in caplog.text
    again = model_cache.cached_model(**kwargs)  # the replaced file is good again
    assert again.status == "cached"
    for a, b in zip(again.model.state_dict().values(), rebuilt.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert sorted(p.name for p in first.path.parent.iterdir()) == [first.path.name]  # no temp files


def test_model_cache_at_a_folder_is_reported_and_left_alone(tmp_path, caplog):
    data = load_digits(split="train")
    kwargs = {
        "arch": "small_cnn",
        "data": data,
        "epochs": 1,
        "seed": 0,
        "device": torch.device("cpu"),
        "output_dir": tmp_path,
        "progress": False,
    }
    path = model_cache.cached_model(**kwargs).path
    path.unlink()
    path.mkdir()
    (path / "user_file").write_text("kept")
    with caplog.at_level("WARNING"):
        source = model_cache.cached_model(**kwargs)
    assert source.status == "uncached" and "a folder" in caplog.text and "without caching" in caplog.text
    assert (path / "user_file").read_text() == "kept"


def test_cache_write_is_atomic(tmp_path, monkeypatch):
    data = load_digits(split="train")

    def broken_save(obj, fh):
        fh.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(model_cache.torch, "save", broken_save)
    source = model_cache.cached_model(
        arch="small_cnn", data=data, epochs=1, seed=0, device=torch.device("cpu"), output_dir=tmp_path, progress=False
    )
    assert source.status == "uncached" and not source.path.exists()
    assert list(source.path.parent.iterdir()) == []


def test_state_dict_model_is_used(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "net.pt"
    torch.save(SmallCNN().state_dict(), path)
    out = tmp_path / "out"
    result = evaluate(model=path, attacks=["fgsm"], detectors=["binary_input"], n_samples=8, output_dir=out)
    assert result.settings["model"] == str(path) and result.settings["model_status"] == "given"
    assert result.timings["training"] == 0.0 and not (out / "models").exists()
