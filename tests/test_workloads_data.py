"""Data loaders: LEAF formats, embedded defaults, typed errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from autlearn.profiler.errors import UserError
from autlearn.workloads import data
from autlearn.workloads.data import DataError
from autlearn.workloads.models import make_config


def _leaf(path, user_data):
    path.write_text(
        json.dumps(
            {"users": list(user_data), "num_samples": [len(v["y"]) for v in user_data.values()], "user_data": user_data}
        )
    )
    return path


def test_embedded_text_is_real_words_with_vocab():
    ds = data.embedded_text_dataset(vocab_size=200, seq_len=5)
    assert not ds.synthetic and ds.vocab[0] == data.UNK and len(ds.vocab) == 200
    assert ds.x.shape[1] == 5 and ds.x.dtype == np.int64 and len(ds) > 1000
    assert ds.x.max() < 200 and ds.y.max() < 200
    # windows are consecutive: the label of window i is the last token of window i+1
    assert (ds.y[:-1] == ds.x[1:, -1]).all()
    assert "love" in ds.vocab and "the" in ds.vocab[:10]


def test_synthetic_femnist_is_deterministic_and_class_conditional():
    a, b = data.synthetic_femnist(num_classes=4, per_class=6, seed=3), data.synthetic_femnist(4, 6, 3)
    assert a.synthetic and a.x.shape == (24, 1, 28, 28) and a.x.dtype == np.float32
    np.testing.assert_array_equal(a.x, b.x)
    assert 0 <= a.x.min() and a.x.max() <= 1
    # nearest class mean classifies most samples: the patterns are learnable
    means = np.stack([a.x[a.y == c].mean(0) for c in range(4)]).reshape(4, -1)
    pred = ((a.x.reshape(24, 1, -1) - means[None]) ** 2).sum(-1).argmin(1)
    assert (pred == a.y).mean() > 0.8
    assert not np.array_equal(a.x, data.synthetic_femnist(4, 6, seed=4).x)


def test_load_femnist_leaf_json(tmp_path):
    rng = np.random.default_rng(0)
    ud = {f"u{i}": {"x": rng.random((3, 784)).round(3).tolist(), "y": [i, 61, 0]} for i in range(2)}
    ds = data.load_femnist(_leaf(tmp_path / "f.json", ud))
    assert ds.x.shape == (6, 1, 28, 28) and list(ds.y) == [0, 61, 0, 1, 61, 0] and not ds.synthetic
    # a directory of LEAF files works too
    _leaf(tmp_path / "g.json", {"v": {"x": [[0.5] * 784], "y": [7]}})
    assert len(data.load_femnist(tmp_path)) == 7


def test_load_shakespeare_rebuilds_text_from_windows(tmp_path):
    text = "to be or not to be that is the question whether tis nobler in the mind to suffer"
    xs = [text[i : i + 20] for i in range(len(text) - 20)]
    ys = [text[i + 20] for i in range(len(text) - 20)]
    ds = data.load_shakespeare(_leaf(tmp_path / "s.json", {"u": {"x": xs, "y": ys}}), vocab_size=50, seq_len=3)
    words = [ds.vocab[i] for i in ds.x[0]] + [ds.vocab[ds.y[0]]]
    assert words == ["to", "be", "or", "not"]
    assert len(ds) == len(data.tokenize(text)) - 3


@pytest.mark.parametrize("loader", [data.load_femnist, data.load_shakespeare])
def test_missing_path_is_a_typed_error_naming_the_path(tmp_path, loader):
    with pytest.raises(DataError, match="nope.json") as e:
        loader(tmp_path / "nope.json")
    assert isinstance(e.value, UserError) and e.value.path.endswith("nope.json")


def test_bad_formats_are_typed_errors(tmp_path):
    (tmp_path / "junk.json").write_text("{not json")
    with pytest.raises(DataError, match="junk.json"):
        data.load_femnist(tmp_path / "junk.json")
    (tmp_path / "shape.json").write_text(json.dumps({"users": ["u"], "user_data": {"u": {"x": 3}}}))
    with pytest.raises(DataError, match="no x/y"):
        data.load_femnist(tmp_path / "shape.json")
    _leaf(tmp_path / "short.json", {"u": {"x": [[0.1] * 10], "y": [1]}})
    with pytest.raises(DataError, match="784"):
        data.load_femnist(tmp_path / "short.json")
    _leaf(tmp_path / "lab.json", {"u": {"x": [[0.1] * 784], "y": [99]}})
    with pytest.raises(DataError, match="labels"):
        data.load_femnist(tmp_path / "lab.json")
    _leaf(tmp_path / "num.json", {"u": {"x": [1, 2], "y": [3, 4]}})
    with pytest.raises(DataError, match="strings"):
        data.load_shakespeare(tmp_path / "num.json")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .json"):
        data.load_femnist(tmp_path / "empty")


def test_default_batches_match_model_configs():
    m = make_config("mobilenet", image_size=56, in_channels=3, batch=4)
    x, y = data.default_batch(m)
    assert x.shape == (4, 3, 56, 56) and x.dtype == np.float32 and y.shape == (4,)
    np.testing.assert_array_equal(x[:, 0], x[:, 2])
    w = make_config("lstm", vocab_size=300, seq_len=7, batch=5)
    x, y = data.default_batch(w, index=2)
    assert x.shape == (5, 7) and x.dtype == np.int64 and y.max() < 300
    assert not np.array_equal(x, data.default_batch(w, index=0)[0])


def test_resize_images_nearest():
    x = np.arange(4, dtype=np.float32).reshape(1, 1, 2, 2)
    r = data.resize_images(x, 4, 3)
    assert r.shape == (1, 3, 4, 4) and r[0, 1, 0, 0] == 0 and r[0, 1, 3, 3] == 3
