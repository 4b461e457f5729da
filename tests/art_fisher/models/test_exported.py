"""torch.export archives as --model: loaded without running pickled or foreign code, checked before reading."""

from __future__ import annotations

import json
import pickle
import zipfile

import pytest
import torch
from torch import nn

from art_fisher.models import ExportedModel, load_exported_model

SHAPE = (3, 6, 6)


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(64, 7)).eval()


def _save(net: nn.Module, path, *, dynamic: bool = True):
    shapes = ({0: torch.export.Dim("batch")},) if dynamic else None
    torch.export.save(torch.export.export(net, (torch.zeros(2, *SHAPE),), dynamic_shapes=shapes), str(path))
    return path


def _rewrite(src, dst, change):
    """Copy archive ``src`` to ``dst``, letting ``change(name, data)`` return new bytes (None: drop the member)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            data = change(info.filename, zin.read(info.filename))
            if data is not None:
                zout.writestr(info.filename, data)
    return dst


class _Boom:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_exported_model_matches_the_original_and_switches_modes(tmp_path):
    net = _net()
    model = load_exported_model(_save(net, tmp_path / "m.pt2"), input_shape=SHAPE, n_classes=7)
    assert isinstance(model, ExportedModel)
    x = torch.rand(5, *SHAPE, requires_grad=True)
    torch.testing.assert_close(model(x), net(x), rtol=1e-5, atol=1e-6)
    model(x).sum().backward()  # input gradients flow through the program (the attacks need them)
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert model.train().training and not model.eval().training


def test_fixed_batch_and_wrong_class_count_are_refused_with_the_fix(tmp_path):
    path = _save(_net(), tmp_path / "fixed.pt2", dynamic=False)
    with pytest.raises(ValueError, match="dynamic_shapes"):
        load_exported_model(path, input_shape=SHAPE)
    path = _save(_net(), tmp_path / "m.pt2")
    with pytest.raises(ValueError, match="7 outputs; the data have 10 classes"):
        load_exported_model(path, input_shape=SHAPE, n_classes=10)
    with pytest.raises(ValueError, match="does not run on a batch of 1"):
        load_exported_model(path, input_shape=(1, 6, 6))


def _pickled_weight(name, data):
    if name.endswith("model_weights_config.json"):
        config = json.loads(data)
        next(iter(config["config"].values()))["use_pickle"] = True
        return json.dumps(config).encode()
    return data


def _pickled_inputs(name, data):
    return pickle.dumps(_Boom()) if name.endswith("sample_inputs/model.pt") else data


def _foreign_target(name, data):
    if name.endswith("models/model.json"):
        return data.replace(b"torch.ops.aten.relu.default", b"torch.serialization.load")
    return data


def _aoti_member(name, data):
    return data


@pytest.mark.parametrize(
    ("change", "extra", "message"),
    [
        (_pickled_weight, None, "pickled or malformed"),
        (_pickled_inputs, None, r"weights_only=True"),
        (_foreign_target, None, "torch.serialization.load"),
        (_aoti_member, "data/aotinductor/model/model.so", "AOTInductor"),
        (_aoti_member, "data/constants/custom_obj_0", "custom-object"),
    ],
)
def test_archives_that_would_run_foreign_code_are_refused_before_loading(tmp_path, monkeypatch, change, extra, message):
    monkeypatch.chdir(tmp_path)
    good = _save(_net(), tmp_path / "m.pt2")
    bad = _rewrite(good, tmp_path / "bad.pt2", change)
    if extra is not None:
        root = zipfile.ZipFile(good).namelist()[0].split("/")[0]
        with zipfile.ZipFile(bad, "a") as archive:
            archive.writestr(f"{root}/{extra}", b"\x7fELF")
    loaded = []
    monkeypatch.setattr(torch.export, "load", lambda *a, **k: loaded.append(a))
    with pytest.raises(ValueError, match=message) as info:
        load_exported_model(bad, input_shape=SHAPE)
    assert str(info.value).startswith(str(bad)) and not loaded and not (tmp_path / "PWNED").exists()


def test_size_bomb_and_foreign_files_are_refused(tmp_path):
    good = _save(_net(), tmp_path / "m.pt2")
    root = zipfile.ZipFile(good).namelist()[0].split("/")[0]
    bomb = _rewrite(good, tmp_path / "bomb.pt2", lambda n, d: d)
    with zipfile.ZipFile(bomb, "a", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{root}/data/weights/weight_99", b"\0" * 50_000_000)
    assert bomb.stat().st_size < 1_000_000
    with pytest.raises(ValueError, match="max_bytes"):
        load_exported_model(bomb, input_shape=SHAPE, max_bytes=10_000_000)
    state = tmp_path / "state.pt"
    torch.save(_net().state_dict(), state)
    with pytest.raises(ValueError, match="torch.export"):
        load_exported_model(state, input_shape=SHAPE)
    (tmp_path / "text.pt2").write_text("not a zip")
    with pytest.raises(ValueError, match="cannot read it as a torch.export archive"):
        load_exported_model(tmp_path / "text.pt2", input_shape=SHAPE)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_exported_model(tmp_path / "none.pt2", input_shape=SHAPE)
