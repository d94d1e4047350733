"""The Python classes against the Rust API (through the CLI) on the real MiniLM and Lite0,
and the other models' shapes and answers."""

import numpy as np
import pytest

import medkern
from conftest import IMAGES, LITE0, MINILM, cli, need

TEXTS = [
    "Patient presents with shortness of breath and a persistent dry cough.",
    "Lactate 3.1 mmol/L, blood cultures drawn.",
    "x",
    "A cat sat quietly on the windowsill watching the rain " * 40,  # truncated at max_len
]


def test_embed_equals_rust_api(minilm):
    got = minilm.embed(TEXTS)
    assert isinstance(got, np.ndarray) and got.dtype == np.float32
    assert got.shape == (len(TEXTS), 384)
    want = cli("embed", "--model", str(MINILM), "--device", "cpu", *TEXTS)
    ref = np.array([r["embedding"] for r in want], dtype=np.float32)
    # The same library call on the same backend: equal to the last bit.
    np.testing.assert_array_equal(got, ref)
    # The folder's sentence-transformers settings: mean pooling, unit length.
    assert minilm.pooling == "mean" and minilm.normalize
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, rtol=1e-5)
    tokens = minilm.tokenize(TEXTS)
    assert [len(t) for t in tokens] == [r["tokens"] for r in want]


def test_embed_options_and_single_text(minilm):
    one = minilm.embed(TEXTS[0])
    assert one.shape == (384,)
    np.testing.assert_array_equal(one, minilm.embed(TEXTS[:1])[0])
    raw = minilm.embed(TEXTS[:2], normalize=False)
    np.testing.assert_allclose(
        raw / np.linalg.norm(raw, axis=1, keepdims=True), minilm.embed(TEXTS[:2]), rtol=1e-5, atol=1e-6
    )
    cls = minilm.embed(TEXTS[:2], pooling="cls", normalize=False)
    assert not np.allclose(cls, raw)


def test_lite0_classify_equals_rust_api(lite0):
    imgs = [str(need(p)) for p in IMAGES]
    got = lite0.classify(imgs, top=3)
    want = cli("classify", "--model", "lite0", "--weights", str(LITE0), "--device", "cpu", "--top", "3", *imgs)
    want = want["results"]
    assert len(got) == len(imgs) == len(want)
    for g, w in zip(got, want):
        assert [t["class"] for t in g["top"]] == [t["class"] for t in w["top"]]
        np.testing.assert_allclose(
            [t["logit"] for t in g["top"]], [t["logit"] for t in w["top"]], rtol=1e-6, atol=1e-6
        )
    # The photograph of a cat is a cat.
    cat = got[[i for i, p in enumerate(imgs) if "chelsea" in p][0]]
    assert "cat" in cat["top"][0]["name"]


def test_lite0_forward_numpy_and_bytes(lite0):
    path = need(IMAGES[0])
    x = lite0.preprocess(str(path))
    assert x.shape == (1, 224, 224, 3) and x.dtype == np.float32
    logits = lite0.forward(x)
    assert isinstance(logits, np.ndarray) and logits.shape == (1, 1000)
    by_path = lite0.classify(str(path), top=1)
    assert int(np.argmax(logits[0])) == by_path["top"][0]["class"]
    np.testing.assert_allclose(logits[0].max(), by_path["top"][0]["logit"], rtol=1e-6)
    # The file's bytes and a decoded uint8 array classify as the path does.
    assert lite0.classify(path.read_bytes(), top=1) == by_path
    # A batch of two prepared images: each row as the image alone.
    two = lite0.forward(np.concatenate([x, x[:, ::-1]]))
    np.testing.assert_allclose(two[0], logits[0], rtol=1e-5, atol=1e-5)
    feats = lite0.features(x)
    assert feats.shape == (1, 1280)


def test_other_models_run_with_random_weights():
    rng = np.random.default_rng(7)
    sepsis = medkern.SepsisNet.load(device="cpu")
    x = rng.standard_normal((2, 224, 224, 3)).astype(np.float32)
    o = sepsis.forward(x)
    assert o["logits"].shape == (2, 2) and o["features"].shape == (2, 128)
    np.testing.assert_allclose(o["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    img = rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)
    c = sepsis.classify(img)
    assert c["class"] in ("sepsis", "no_sepsis")

    ae = medkern.Autoencoder.load(device="cpu")
    frames = rng.random((2, 96, 96, 3), dtype=np.float32)
    o = ae.forward(frames)
    assert o["reconstruction"].shape == (2, 96, 96, 3)
    assert o["codes"].shape == (2, 1152)
    mse = ((o["reconstruction"].astype(np.float64) - frames) ** 2).mean(axis=(1, 2, 3))
    np.testing.assert_allclose(o["mse"], mse, rtol=1e-5)

    rn = medkern.ResNet.load(depth=18, num_classes=3, device="cpu")
    o = rn.forward(rng.standard_normal((1, 64, 64, 3)).astype(np.float32))
    assert o["logits"].shape == (1, 3) and o["features"].shape == (1, 512)


def test_exam_model():
    exam = medkern.ExamModel.load(device="cpu")
    keys = exam.emr_features
    assert "age" in keys
    img = np.random.default_rng(3).integers(0, 256, (256, 256), dtype=np.uint8)
    r = exam.assess(img, {"age": 71})
    assert 0.0 <= r["oxygen_24h"] <= 1.0 and 0.0 <= r["oxygen_72h"] <= 1.0
    np.testing.assert_allclose(sum(r["ordinal"]["probabilities"]), 1.0, rtol=1e-5)
    # Present and missing split the model's own feature list (read independently above).
    assert r["emr_present"] == ["age"]
    assert sorted(r["emr_missing"]) == sorted(k for k in keys if k != "age")
    with pytest.raises(medkern.InvalidInputError):
        exam.assess(img, {"age": "old"})


def test_compress_int8_report(tmp_path, minilm):
    out = tmp_path / "int8"
    report = medkern.compress(need(MINILM), out, int8=True, device="cpu")
    assert report["compressed"]["bytes"] < report["dense"]["bytes"]
    assert report["size_ratio"] > 1.3  # the f32 word embeddings stay
    assert report["compressed"]["cosine_min"] > 0.95
    assert "int8_weight_sqnr_db" in report
    small = medkern.BertModel.load(out, device="cpu")
    e = small.embed(TEXTS[:2])
    cos = (e * minilm.embed(TEXTS[:2])).sum(axis=1)
    assert cos.min() > 0.95
    # The output folder must not be overwritten by a second run into it.
    with pytest.raises(medkern.InvalidInputError):
        medkern.compress(need(MINILM), MINILM, int8=True, device="cpu")
