"""Tests of :mod:`art_fisher.detection`: detector files, their checks and the model fingerprint."""

from __future__ import annotations

import copy
import pickle
import warnings
import zipfile

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from art_fisher.detection._detector import FisherInformationDetector
from art_fisher.detection._estimators import ThresholdClassifier
from art_fisher.detection._persistence import DETECTOR_FORMAT, model_fingerprint


def _detection_set(clean: np.ndarray, adv: np.ndarray, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.concatenate([clean[idx], adv[idx]])
    y = np.r_[np.zeros(len(idx), dtype=int), np.ones(len(idx), dtype=int)]
    return x, y


@pytest.fixture(scope="module")
def fitted_detector(digits_cnn, digits_attacks):
    clean, adv = digits_attacks["deepfool"]
    x, y = _detection_set(clean, adv, np.arange(16))
    detector = FisherInformationDetector(digits_cnn.classifier, metrics=("trace", "quadratic_form"))
    detector.fit(x, y)
    return detector, x


@pytest.mark.parametrize("estimator", [None, ThresholdClassifier(strategy="target_fpr", target_fpr=0.1)])
def test_save_load_round_trip_gives_identical_decisions(digits_cnn, digits_attacks, tmp_path, estimator):
    clean, adv = digits_attacks["deepfool"]
    x, y = _detection_set(clean, adv, np.arange(16))
    detector = FisherInformationDetector(digits_cnn.classifier, estimator=estimator, chunk_size=16)
    detector.fit(x, y)
    path = tmp_path / "detector.skops"
    detector.save(path)
    loaded = FisherInformationDetector.load(path, digits_cnn.classifier)
    assert loaded.get_params().keys() == detector.get_params().keys()
    for key, value in detector.get_params().items():
        if key != "estimator":
            assert loaded.get_params()[key] == value, key
    (r1, d1), (r2, d2) = detector.detect(x), loaded.detect(x)
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(r1["decision_scores"], r2["decision_scores"])
    with zipfile.ZipFile(path) as archive:  # the learned state only: no weights, no pickle
        assert not any(name.endswith((".pkl", ".pt", ".model")) for name in archive.namelist())
        assert sum(info.file_size for info in archive.infolist()) < 200_000


def test_load_refuses_other_files_without_running_them(digits_cnn, fitted_detector, tmp_path):
    import skops.io as sio

    clf = digits_cnn.classifier
    marker = tmp_path / "executed"
    payload = tmp_path / "evil.skops"
    payload.write_bytes(pickle.dumps(_Exploit(str(marker))))
    with pytest.raises(ValueError, match="not a saved FisherInformationDetector"):
        FisherInformationDetector.load(payload, clf)
    assert not marker.exists()

    other = tmp_path / "other.skops"
    sio.dump({"format": "something else", "format_version": 1}, other)
    with pytest.raises(ValueError, match="not a saved FisherInformationDetector"):
        FisherInformationDetector.load(other, clf)

    detector, _ = fitted_detector
    good = tmp_path / "good.skops"
    detector.save(good)
    state = sio.load(good, trusted=sio.get_untrusted_types(file=good))
    assert state["format"] == DETECTOR_FORMAT
    state["format_version"] = 99
    newer = tmp_path / "newer.skops"
    sio.dump(state, newer)
    with pytest.raises(ValueError, match="format version 99"):
        FisherInformationDetector.load(newer, clf)

    state["format_version"] = 1
    state["estimator_"] = _Unknown()
    untrusted = tmp_path / "untrusted.skops"
    sio.dump(state, untrusted)
    with pytest.raises(ValueError, match="not trusted.*_Unknown"):
        FisherInformationDetector.load(untrusted, clf)


def test_load_checks_the_classifier(fitted_detector, tmp_path):
    from art.estimators.classification import PyTorchClassifier

    from art_fisher.models._architectures import SmallCNN

    detector, _ = fitted_detector
    path = tmp_path / "d.skops"
    detector.save(path)
    with pytest.raises(TypeError, match="PyTorchClassifier"):
        FisherInformationDetector.load(path, object())
    other = PyTorchClassifier(SmallCNN(n_classes=3), torch.nn.CrossEntropyLoss(), (1, 8, 8), 3, device_type="cpu")
    with pytest.raises(ValueError, match="3 classes"):
        FisherInformationDetector.load(path, other)
    with pytest.raises(NotFittedError):
        FisherInformationDetector(detector.classifier).save(tmp_path / "unfitted.skops")


class _Exploit:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


class _Unknown:
    pass


def _classifier(model, **kwargs):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(model, torch.nn.CrossEntropyLoss(), (1, 8, 8), 10, device_type="cpu", **kwargs)


def test_fingerprint_follows_weights_buffers_and_preprocessing(digits_cnn):
    model = digits_cnn.classifier.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    base = model_fingerprint(_classifier(model))
    assert len(base) == 64 and base == model_fingerprint(_classifier(model))
    assert model_fingerprint(digits_cnn.classifier) == base  # clip_values do not change the metrics
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.classifier[3].bias[0] += 1e-6
    assert model_fingerprint(_classifier(other)) != base
    assert model_fingerprint(_classifier(model, preprocessing=(0.1, 0.5))) != base
    assert model_fingerprint(_classifier(model, preprocessing=(0.1, 0.5))) != model_fingerprint(
        _classifier(model, preprocessing=(0.1, 0.6))
    )
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_load_refuses_another_model_unless_allowed(fitted_detector, tmp_path):
    detector, _x = fitted_detector
    path = tmp_path / "d.skops"
    detector.save(path)
    other = copy.deepcopy(detector.classifier.model)
    with torch.no_grad():
        other.features[0].weight.mul_(1.01)
    retrained = _classifier(other, clip_values=(0.0, 1.0))
    with pytest.raises(ValueError, match="other weights or preprocessing.*allow_other_model=True"):
        FisherInformationDetector.load(path, retrained)
    with pytest.warns(UserWarning, match="allow_other_model=True"):
        loaded = FisherInformationDetector.load(path, retrained, allow_other_model=True)
    assert loaded.model_fingerprint_ == model_fingerprint(retrained)
    with pytest.raises(ValueError, match="allow_other_model must be True or False"):
        FisherInformationDetector.load(path, retrained, allow_other_model="yes")


def _edited(tmp_path, good, name, edit):
    """A copy of the saved detector ``good`` with its state dict changed by ``edit``."""
    import skops.io as sio

    state = sio.load(good, trusted=sio.get_untrusted_types(file=good))
    edit(state)
    path = tmp_path / name
    sio.dump(state, path)
    return path


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.__setitem__("estimator_", None), "'estimator_' is not a fitted estimator"),
        (lambda s: s.pop("feature_names"), r"keys \['feature_names'\] are missing"),
        (lambda s: s.pop("model_fingerprint"), r"keys \['model_fingerprint'\] are missing"),
        (lambda s: s["settings"].__setitem__("treshold", 1), "unknown keys"),
        (lambda s: s["settings"].__setitem__("chunk_size", -3), "settings are invalid"),
        (lambda s: s.__setitem__("settings", [1, 2]), "'settings' must be a dict"),
        (lambda s: s.__setitem__("input_shape", "1x8x8"), "'input_shape' must be a list"),
        (lambda s: s.__setitem__("feature_names", ["trace"]), "feature names do not match"),
        (lambda s: s.__setitem__("model_fingerprint", "abc"), "'model_fingerprint' must be"),
        (lambda s: s.pop("decision_threshold"), r"keys \['decision_threshold'\] are missing"),
        (lambda s: s.__setitem__("decision_threshold", "0.3"), "'decision_threshold' must be None or a finite"),
        (lambda s: s.__setitem__("clean_fpr", float("nan")), "'clean_fpr' must be None or a finite"),
        (lambda s: s["settings"].__setitem__("threshold", "youden"), "settings are invalid"),
    ],
)
def test_malformed_files_give_the_documented_value_error(fitted_detector, tmp_path, edit, match):
    detector, _ = fitted_detector
    good = tmp_path / "good.skops"
    detector.save(good)
    with pytest.raises(ValueError, match=match):
        FisherInformationDetector.load(_edited(tmp_path, good, "bad.skops", edit), detector.classifier)


def test_directory_missing_and_deeply_nested_files(fitted_detector, tmp_path):
    clf = fitted_detector[0].classifier
    with pytest.raises(ValueError, match="is not a file"):
        FisherInformationDetector.load(tmp_path, clf)
    with pytest.raises(ValueError, match="does not exist"):
        FisherInformationDetector.load(tmp_path / "nope.skops", clf)
    deep = tmp_path / "deep.skops"
    with zipfile.ZipFile(deep, "w") as archive:
        archive.writestr("schema.json", "[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="RecursionError"):
        FisherInformationDetector.load(deep, clf)
    nested = tmp_path / "nested.skops"
    node = '{"__class__": "dict", "__module__": "builtins", "__loader__": "DictNode", "protocol": 2, "content": {"a": '
    with zipfile.ZipFile(nested, "w") as archive:  # skops' own node layout, nested 5000 deep
        archive.writestr("schema.json", node * 5000 + "{}" + "}}" * 5000)
    with pytest.raises(ValueError, match="not a saved FisherInformationDetector"):
        FisherInformationDetector.load(nested, clf)


def test_the_decision_threshold_is_saved(fitted_detector, tmp_path):
    detector, x = fitted_detector
    assert detector.threshold == "target_fpr" and detector.threshold_ is not None
    path = tmp_path / "d.skops"
    detector.save(path)
    loaded = FisherInformationDetector.load(path, detector.classifier)
    assert loaded.threshold_ == detector.threshold_ and loaded.clean_fpr_ == detector.clean_fpr_
    (r1, d1), (r2, d2) = detector.detect(x), loaded.detect(x)
    assert r1["threshold"] == r2["threshold"] == detector.threshold_
    np.testing.assert_array_equal(d1, d2)


def test_save_is_atomic(fitted_detector, tmp_path, monkeypatch):
    import skops.io as sio

    detector, _ = fitted_detector
    path = tmp_path / "d.skops"
    detector.save(path)
    before = path.read_bytes()

    def broken(obj, file):
        file.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(sio, "dump", broken)
    with pytest.raises(OSError, match="disk full"):
        detector.save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["d.skops"]  # no temporary file left behind


def test_clean_calibrated_detector_round_trip(digits_cnn, tmp_path):
    x = digits_cnn.x_test[:60]
    detector = FisherInformationDetector(digits_cnn.classifier, metrics=("trace", "max_eigenvalue"), target_fpr=0.1)
    detector.fit(x)
    path = tmp_path / "clean.skops"
    detector.save(path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same model, same versions: no warning
        loaded = FisherInformationDetector.load(path, digits_cnn.classifier)
    assert loaded.calibration_ == "clean" and loaded.target_fpr == 0.1
    (r1, d1), (r2, d2) = detector.detect(x), loaded.detect(x)
    np.testing.assert_array_equal(d1, d2)
    np.testing.assert_array_equal(r1["decision_scores"], r2["decision_scores"])


# ----------------------------------------------------------------------- size bombs and lying fields
def _skops_bomb(path, *, n_nodes=20, megabytes=50):
    """A small .skops whose schema points ``n_nodes`` array nodes at one deflated ``megabytes`` MB .npy."""
    import io
    import json

    import skops.io as sio

    plain = path.with_suffix(".plain")
    sio.dump({f"a{i}": np.zeros(1) for i in range(n_nodes)}, plain)
    with zipfile.ZipFile(plain) as archive:
        schema = json.loads(archive.read("schema.json"))
    for node in schema["content"].values():
        node["file"] = "big.npy"
    npy = io.BytesIO()
    np.save(npy, np.zeros(megabytes * 2**20 // 8))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("schema.json", json.dumps(schema))
        archive.writestr("big.npy", npy.getvalue())


_LOAD_PROBE = """
import resource, sys
import torch
from art.estimators.classification import PyTorchClassifier
from art_fisher.detection._detector import FisherInformationDetector
from art_fisher.models._architectures import SmallCNN

clf = PyTorchClassifier(SmallCNN(n_classes=3), torch.nn.CrossEntropyLoss(), (1, 8, 8), 3, device_type="cpu")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    FisherInformationDetector.load(sys.argv[1], clf)
    print("ACCEPTED")
except ValueError as exc:
    print(str(exc)[:300])
print("GROWTH_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


def test_a_skops_size_bomb_is_refused_before_skops_reads_it(tmp_path):
    """Before: ValueError only after 2.35 GB (skops reads the 50 MB member once per node)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    path = tmp_path / "bomb.skops"
    _skops_bomb(path)
    assert path.stat().st_size < 200_000
    out = subprocess.run(
        [sys.executable, "-c", _LOAD_PROBE, str(path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[3])},
    )
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout + out.stderr[-2000:]
    assert lines[0].startswith(
        f"{path} is not a valid saved FisherInformationDetector: its schema's nodes would read 1048578560 bytes"
    )
    assert int(lines[1].split()[1]) / 1024 < 300


def test_archive_members_are_checked_before_skops(tmp_path):
    from art_fisher.detection import _persistence as persistence

    _skops_bomb(tmp_path / "one.skops", n_nodes=1, megabytes=1)  # within the limits: passes the archive check
    persistence._check_archive(tmp_path / "one.skops")
    lying = tmp_path / "lying.skops"
    with zipfile.ZipFile(tmp_path / "one.skops") as src, zipfile.ZipFile(lying, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
    raw = bytearray(lying.read_bytes())  # claim a smaller size for big.npy in the central directory
    central = raw.rfind(b"PK\x01\x02", 0, raw.rfind(b"big.npy"))
    raw[central + 24 : central + 28] = (1000).to_bytes(4, "little")
    lying.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="lying.skops"):
        persistence._check_archive(lying)
    missing = tmp_path / "missing.skops"
    with zipfile.ZipFile(missing, "w") as archive:
        archive.writestr("schema.json", '{"file": "nowhere.npy"}')
    with pytest.raises(ValueError, match="names a member 'nowhere.npy' that the archive lacks"):
        persistence._check_archive(missing)
    with zipfile.ZipFile(tmp_path / "noschema.skops", "w") as archive:
        archive.writestr("x.npy", b"")
    with pytest.raises(ValueError, match="no schema.json"):
        persistence._check_archive(tmp_path / "noschema.skops")


def test_lying_fields_are_refused_at_load(digits_cnn, fitted_detector, tmp_path):
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression

    detector, _x = fitted_detector
    good = tmp_path / "good.skops"
    detector.save(good)
    state = sio.load(good, trusted=sio.get_untrusted_types(file=good))
    bad = dict(state, format_version=True)  # bool is not an int, though True == 1
    sio.dump(bad, tmp_path / "bool.skops")
    with pytest.raises(ValueError, match="format version True"):
        FisherInformationDetector.load(tmp_path / "bool.skops", digits_cnn.classifier)
    rng = np.random.default_rng(0)
    other = LogisticRegression().fit(rng.normal(size=(20, 5)), np.r_[np.zeros(10), np.ones(10)])
    sio.dump(dict(state, estimator_=other), tmp_path / "five.skops")
    with pytest.raises(
        ValueError, match="is inconsistent: its 'estimator_' was fitted on 5 features; the detector computes"
    ):
        FisherInformationDetector.load(tmp_path / "five.skops", digits_cnn.classifier)


@pytest.mark.parametrize("version", [2, 3])
def test_other_format_versions_are_refused_with_what_to_do(fitted_detector, tmp_path, version):
    detector, _ = fitted_detector
    good = tmp_path / "good.skops"
    detector.save(good)

    def as_other_version(state):
        state["format_version"] = version

    other = _edited(tmp_path, good, "other.skops", as_other_version)
    with pytest.raises(ValueError, match=f"format version {version}; this art_fisher reads version 1 only. Fit"):
        FisherInformationDetector.load(other, detector.classifier)


def _set_item(obj, name, index, value):
    """Set one entry of the array ``obj.name`` (a fitted estimator's attribute) to ``value``."""
    array = np.array(getattr(obj, name), dtype=np.float64)
    array.reshape(-1)[index] = value
    setattr(obj, name, array if np.ndim(getattr(obj, name)) else float(array))


def _step(state, i):
    return state["estimator_"].steps[i][1]


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(
    ("edit", "field"),
    [
        (lambda s, v: _set_item(_step(s, 2), "coef_", 0, v), "steps[2][1].coef_"),
        (lambda s, v: _set_item(_step(s, 2), "intercept_", 0, v), "steps[2][1].intercept_"),
        (lambda s, v: _set_item(_step(s, 1), "mean_", 1, v), "steps[1][1].mean_"),
        (lambda s, v: _set_item(_step(s, 1), "scale_", 0, v), "steps[1][1].scale_"),
        (lambda s, v: _set_item(_step(s, 0), "floor_", 0, v), "steps[0][1].floor_"),
    ],
)
def test_non_finite_fitted_values_are_refused_naming_file_and_field(fitted_detector, tmp_path, edit, field, value):
    """Before: a file whose fitted estimator held NaN or inf loaded and then flagged nothing (or everything)."""
    detector, _ = fitted_detector
    good = tmp_path / "good.skops"
    detector.save(good)
    bad = _edited(tmp_path, good, "bad.skops", lambda s: edit(s, value))
    with pytest.raises(ValueError, match="NaN or infinite value at") as err:
        FisherInformationDetector.load(bad, detector.classifier)
    assert str(bad) in str(err.value) and f"'estimator_' holds a NaN or infinite value at {field}" in str(err.value)


def test_non_finite_values_of_the_other_estimators_are_refused(digits_cnn, digits_attacks, tmp_path):
    from sklearn.ensemble import IsolationForest

    clean, adv = digits_attacks["deepfool"]
    x, y = _detection_set(clean, adv, np.arange(12))
    clf = digits_cnn.classifier
    cases = [
        (FisherInformationDetector(clf, metrics=("trace",)), y, ("threshold_",)),
        (FisherInformationDetector(clf, metrics=("trace", "quadratic_form"), target_fpr=0.2), None,
         ("center_", "scale_", "threshold_", "offset_", "floor_")),
        (FisherInformationDetector(clf, metrics=("trace",), estimator=IsolationForest(n_estimators=3, random_state=0)),
         None, ("offset_",)),
    ]  # fmt: skip
    trusted = ["sklearn.tree._tree.Tree"]
    for detector, labels, fields in cases:
        detector.fit(x if labels is not None else clean[:12], labels)
        good = tmp_path / "good.skops"
        detector.save(good)
        for field in fields:
            bad = _edited(tmp_path, good, "bad.skops", lambda s, f=field: _set_item(s["estimator_"], f, 0, np.nan))
            with pytest.raises(ValueError, match=rf"bad.skops .*'estimator_' holds a NaN or infinite value at {field}"):
                FisherInformationDetector.load(bad, clf, trusted=trusted)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s["settings"].__setitem__("threshold", 0.25), r"threshold=0.25 .* must be the threshold setting's"),
        (lambda s: s["settings"].__setitem__("threshold", "estimator"), r"threshold='estimator' .* must be None"),
        (lambda s: s.__setitem__("decision_threshold", None), r"threshold='target_fpr' .* must be a number each"),
        (lambda s: s.__setitem__("clean_fpr", None), r"threshold='target_fpr' .* must be a number each"),
        (lambda s: s.__setitem__("clean_fpr", 1.5), r"'clean_fpr' must be a share in \[0, 1\]; got 1.5"),
        (lambda s: s.__setitem__("clean_fpr", -0.25), r"'clean_fpr' must be a share in \[0, 1\]; got -0.25"),
        (lambda s: s["settings"].__setitem__("target_fpr", 1.5), "settings are invalid"),
    ],
)
def test_settings_that_disagree_with_the_saved_threshold_are_refused(fitted_detector, tmp_path, edit, match):
    """Before: a file whose settings disagreed with its saved threshold, or with clean_fpr 1.5, loaded."""
    detector, _ = fitted_detector
    good = tmp_path / "good.skops"
    detector.save(good)
    bad = _edited(tmp_path, good, "bad.skops", edit)
    with pytest.raises(ValueError, match=match) as err:
        FisherInformationDetector.load(bad, detector.classifier)
    assert str(bad) in str(err.value)
