"""Backbones: the torch-free legacy .pth reader, EfficientNet-Lite0 vs a PyTorch golden, keras.applications wiring."""

from __future__ import annotations

import collections
import io
import json
import pickle
import struct
from pathlib import Path
from typing import ClassVar

import cv2
import keras
import numpy as np
import pytest

from training.backbones import backbone_names, get_backbone, keras_apps
from training.backbones.efficientnet_lite import (
    NORMALISATION,
    WEIGHTS_NOTICE,
    build_efficientnet_lite,
    feature_extractor,
    weights_path,
)
from training.backbones.torch_pickle import MAGIC_NUMBER, PROTOCOL_VERSION, load_legacy_state_dict

GOLDEN = Path(__file__).parents[1] / "fixtures" / "efficientnet_lite0_golden.json"


# ---------------------------------------------------------------- a tiny legacy torch.save writer (no torch)


class _Global:
    """Pickled as a bare GLOBAL opcode ``module name`` (lets the test name torch.* without torch)."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name

    def __call__(self, *args):  # pickle insists that a reduce function is callable
        raise NotImplementedError


class _Reduce:
    def __init__(self, func: _Global, args: tuple) -> None:
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _FakeStorage:
    def __init__(self, key: str, data: np.ndarray, view: tuple[str, int, int] | None = None) -> None:
        self.key, self.data, self.view = key, data, view


class _FakeTensor:
    def __init__(self, storage: _FakeStorage, offset: int, size: tuple, stride: tuple) -> None:
        self.args = (storage, offset, size, stride, False, collections.OrderedDict())

    def __reduce__(self):
        return _Global("torch._utils", "_rebuild_tensor_v2"), self.args


class _LegacyPickler(pickle._Pickler):
    _TYPES: ClassVar[dict[np.dtype, str]] = {
        np.dtype("<f4"): "FloatStorage",
        np.dtype("<i8"): "LongStorage",
        np.dtype("<f2"): "HalfStorage",
    }

    def persistent_id(self, obj):
        if isinstance(obj, _FakeStorage):
            return ("storage", _Global("torch", self._TYPES[obj.data.dtype]), obj.key, "cpu", obj.data.size, obj.view)
        return None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        super().save(obj, save_persistent_id)


def _legacy_bytes(obj, storages: list[_FakeStorage]) -> bytes:
    buf = io.BytesIO()
    for header in (MAGIC_NUMBER, PROTOCOL_VERSION, {"protocol_version": 1001, "little_endian": True}):
        pickle.dump(header, buf, protocol=2)
    _LegacyPickler(buf, protocol=2).dump(obj)
    pickle.dump([s.key for s in storages], buf, protocol=2)
    for s in storages:
        buf.write(struct.pack("<q", s.data.size) + s.data.tobytes())
    return buf.getvalue()


# ---------------------------------------------------------------- (a) legacy loader


def test_legacy_loader_reads_lite0_checkpoint():
    sd = load_legacy_state_dict(weights_path("lite0"))
    assert len(sd) == 296
    assert sd["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert sd["_blocks.0._depthwise_conv.weight"].shape == (32, 1, 3, 3)
    assert sd["_blocks.15._project_conv.weight"].shape == (320, 1152, 1, 1)
    assert sd["_conv_head.weight"].shape == (1280, 320, 1, 1)
    assert sd["_fc.weight"].shape == (1000, 1280) and sd["_fc.bias"].shape == (1000,)
    assert sd["_bn0.num_batches_tracked"].shape == () and sd["_bn0.num_batches_tracked"].dtype == np.int64
    assert all(v.dtype == np.float32 for k, v in sd.items() if not k.endswith("num_batches_tracked"))
    assert float(sd["_bn0.running_var"].min()) >= 0  # a few channels of this checkpoint are dead (var 0)


def test_legacy_loader_handles_strides_offsets_and_views(tmp_path):
    base = np.arange(60, dtype="<f4")
    root = _FakeStorage("0", base)
    view = _FakeStorage("0", base, view=("0v", 10, 20))  # elements 10..29 of the root storage
    longs = _FakeStorage("1", np.arange(7, dtype="<i8"))
    cube = base.reshape(3, 4, 5)
    sd = collections.OrderedDict(
        t=_FakeTensor(root, 0, (5, 4, 3), (1, 5, 20)),  # cube.transpose(2, 1, 0)
        s=_FakeTensor(root, 21, (2, 2, 3), (20, 10, 1)),  # cube[1:, ::2, 1:4]
        v=_FakeTensor(view, 2, (3, 4), (4, 1)),  # base[12:24].reshape(3, 4)
        n=_FakeTensor(longs, 6, (), ()),
    )
    path = tmp_path / "legacy.pth"
    path.write_bytes(_legacy_bytes(sd, [root, longs]))
    out = load_legacy_state_dict(path)
    np.testing.assert_array_equal(out["t"], cube.transpose(2, 1, 0))
    np.testing.assert_array_equal(out["s"], cube[1:, ::2, 1:4])
    np.testing.assert_array_equal(out["v"], base[12:24].reshape(3, 4))
    assert out["n"].shape == () and int(out["n"]) == 6


def test_legacy_loader_refuses_disallowed_globals(tmp_path):
    evil = _Global("os", "system")
    path = tmp_path / "evil.pth"
    path.write_bytes(_legacy_bytes(collections.OrderedDict(w=_Reduce(evil, ("echo pwned",))), []))
    with pytest.raises(pickle.UnpicklingError, match=r"os\.system"):
        load_legacy_state_dict(path)
    # a disallowed global already in the first (magic number) pickle
    buf = io.BytesIO()
    _LegacyPickler(buf, protocol=2).dump(_Reduce(_Global("builtins", "eval"), ("1+1",)))
    path.write_bytes(buf.getvalue())
    with pytest.raises(pickle.UnpicklingError, match=r"builtins\.eval"):
        load_legacy_state_dict(path)


# ---------------------------------------------------------------- (b) golden vs the PyTorch reference


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


@pytest.fixture(scope="module")
def golden_input(golden, datasets_root) -> np.ndarray:
    path = datasets_root / golden["image"]
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert bgr is not None, f"cannot read {path}"
    size = golden["input_size"]
    rgb = cv2.cvtColor(cv2.resize(bgr, (size, size), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
    offset, scale = NORMALISATION
    x = ((rgb.astype(np.float32) - offset) / scale)[None]
    assert float(x.mean()) == pytest.approx(golden["input_stats"]["mean"], abs=1e-4), "pre-processing drifted"
    return x


def test_lite0_reproduces_torch_logits(golden, golden_input):
    model = build_efficientnet_lite("lite0", golden["input_size"], "imagenet", include_top=True)
    logits = np.asarray(model(golden_input, training=False))[0]
    assert np.argsort(-logits)[:5].tolist() == golden["top5_indices"]
    np.testing.assert_allclose(logits[golden["top5_indices"]], golden["top5_logits"], atol=1e-3)


def test_lite0_features_match_torch_stats(golden, golden_input):
    taps = tuple(golden["features"])
    feats = feature_extractor("lite0", golden["input_size"], "imagenet", taps)(golden_input, training=False)
    for tap, fmap in zip(taps, feats, strict=True):
        ref, arr = golden["features"][tap], np.asarray(fmap, dtype=np.float64)[0]
        assert list(arr.shape) == ref["shape"]
        assert arr.mean() == pytest.approx(ref["mean"], abs=1e-3), tap
        assert arr.std() == pytest.approx(ref["std"], rel=1e-4), tap


def test_weights_notice_and_normalisation():
    assert "Google" in WEIGHTS_NOTICE and "Apache" in WEIGHTS_NOTICE
    assert NORMALISATION == (127.0, 128.0)


# ---------------------------------------------------------------- (c) feature extractor shapes


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (224, [(56, 56, 24), (28, 28, 40), (14, 14, 112), (7, 7, 320)]),
        (256, [(64, 64, 24), (32, 32, 40), (16, 16, 112), (8, 8, 320)]),
    ],
)
def test_lite0_feature_extractor_shapes(size, expected):
    model = feature_extractor("lite0", size, None, ("stride4", "stride8", "stride16", "stride32"))
    assert [tuple(o.shape[1:]) for o in model.outputs] == expected
    outs = model(np.zeros((2, size, size, 3), np.float32), training=False)
    assert [tuple(o.shape) for o in outs] == [(2, *e) for e in expected]


def test_unknown_taps_and_variants_are_rejected():
    with pytest.raises(ValueError, match="stride64"):
        feature_extractor("lite0", 224, None, ("stride64",))
    with pytest.raises(ValueError, match="lite9"):
        build_efficientnet_lite("lite9", weights=None)
    with pytest.raises(ValueError, match="unknown backbone"):
        get_backbone("wide_resnet50", 224, None)


# ---------------------------------------------------------------- (d) keras.applications wiring


@pytest.mark.parametrize(
    ("name", "channels"),
    [("resnet50", (512, 1024)), ("efficientnet_b0", (40, 112)), ("vgg16", (512, 512))],
)
def test_keras_apps_stride8_16_shapes(name, channels):
    model, (offset, scale) = get_backbone(name, 224, None, ("stride8", "stride16"))
    assert [tuple(o.shape[1:]) for o in model.outputs] == [(28, 28, channels[0]), (14, 14, channels[1])]
    assert (offset, scale) == keras_apps.NORMALISATION[name]


def test_caffe_adapter_equals_keras_preprocess_input():
    rgb = np.random.default_rng(0).uniform(0, 255, (1, 8, 8, 3)).astype(np.float32)
    offset, scale = keras_apps.NORMALISATION["resnet50"]
    adapted = np.asarray(keras_apps._caffe_adapter(offset)((rgb - offset) / scale))
    expected = np.asarray(keras.applications.resnet50.preprocess_input(rgb.copy()))
    np.testing.assert_allclose(adapted, expected, atol=1e-4)


def test_registry_names():
    assert {"efficientnet_lite0", "resnet50", "efficientnet_b0", "vgg16"} <= set(backbone_names())
