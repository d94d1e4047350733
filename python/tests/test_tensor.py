"""Tensors across DLPack, devices, errors, and threads sharing a model."""

import threading

import numpy as np
import pytest

import medkern

DTYPES = [np.float32, np.float16, np.int8, np.int32, np.uint8, np.uint16]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1,), (7,), (3, 33), (2, 1, 257), (0, 5)])
def test_numpy_round_trip(dtype, shape):
    rng = np.random.default_rng(sum(shape) + len(shape))
    a = (rng.standard_normal(shape) * 50).astype(dtype)
    if a.size:
        a.flat[0] = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 6e4  # an outlier
    t = medkern.Tensor.from_dlpack(a)
    assert t.shape == shape and t.dtype == np.dtype(dtype).name and t.device.kind == "cpu"
    b = t.numpy()
    np.testing.assert_array_equal(a, b)
    # Host memory is copied in: changing the source later leaves the tensor as it was.
    if a.size:
        a.flat[0] = 0
        assert b.flat[0] != 0
    # Exported without a copy: two consumers see the same memory, read-only.
    c, d = np.from_dlpack(t), np.from_dlpack(t)
    assert not c.flags.writeable
    if a.size:
        assert np.shares_memory(c, d)
    # A read-only medkern output goes back in (copied).
    np.testing.assert_array_equal(medkern.Tensor.from_dlpack(c).numpy(), c)


def test_dlpack_refusals():
    with pytest.raises(medkern.InvalidInputError, match="C-contiguous"):
        medkern.Tensor.from_dlpack(np.ones((4, 3), np.float32).T)
    with pytest.raises(medkern.InvalidInputError, match="dtype"):
        medkern.Tensor.from_dlpack(np.ones(3, np.float64))
    with pytest.raises(medkern.InvalidInputError, match="dtype"):
        medkern.Tensor.from_dlpack(np.ones(3, bool))
    with pytest.raises(TypeError, match="__dlpack__"):
        medkern.Tensor.from_dlpack([1.0, 2.0])
    t = medkern.Tensor.from_dlpack(np.ones(3, np.float32))
    assert t.__dlpack_device__() == (1, 0)
    with pytest.raises(BufferError):
        t.__dlpack__(dl_device=(2, 0))
    with pytest.raises(BufferError):
        t.__dlpack__(copy=True)


def test_emulated_gpu_tensors():
    emu = medkern.Device("emu")
    assert emu.kind == "emu"
    a = np.arange(24, dtype=np.float16).reshape(2, 3, 4)
    t = medkern.Tensor.from_dlpack(a, device=emu)
    assert t.device.kind == "emu"
    np.testing.assert_array_equal(t.numpy(), a)
    np.testing.assert_array_equal(t.to("cpu").numpy(), a)
    # No DLPack consumer can address the emulated GPU's memory: refused, not misread.
    with pytest.raises(BufferError, match="emulated"):
        np.from_dlpack(t)


def test_bad_input_raises_with_medkerns_message(lite0, minilm):
    with pytest.raises(medkern.InvalidInputError, match="expected cpu, gpu"):
        medkern.Device("tpu")
    with pytest.raises(medkern.InvalidInputError):
        medkern.BertModel.load("/nonexistent/model", device="cpu")
    # A wrong input shape: the error names the op and what it expected.
    with pytest.raises(medkern.MedkernError, match=r"shape|expected"):
        lite0.forward(np.ones((1, 224, 224), np.float32))
    with pytest.raises(medkern.InvalidInputError, match="expected \\[H, W\\]"):
        lite0.classify(np.ones((2, 2, 2, 2), np.uint8))
    with pytest.raises(medkern.InvalidInputError, match="image 1"):
        lite0.classify([np.ones((8, 8, 3), np.uint8), b"not an image"])
    with pytest.raises(medkern.InvalidInputError, match="pooling"):
        minilm.embed(["a"], pooling="median")
    with pytest.raises(TypeError):
        minilm.embed([1, 2])
    with pytest.raises(TypeError):
        minilm.classify([("a", "b"), "c"])
    with pytest.raises(medkern.InvalidInputError, match="variant"):
        medkern.EfficientNet.load(variant="b9", device="cpu")
    with pytest.raises(medkern.InvalidInputError, match="budget"):
        medkern.compress("/x", "/y", bits="auto")


def test_corrupt_weight_file(tmp_path):
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"\xff" * 64)
    with pytest.raises(medkern.InvalidInputError):
        medkern.EfficientNet.load(bad, device="cpu")


def test_threads_share_a_model(minilm):
    texts = [f"patient {i}: fever {37 + i % 4} degrees and cough" for i in range(24)]
    alone = {t: minilm.embed([t])[0] for t in texts}
    results, errors = {}, []

    def work(chunk):
        try:
            for t, e in zip(chunk, minilm.embed(chunk)):
                results[t] = e
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(texts[i::4],)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors
    assert set(results) == set(texts)
    for t in texts:
        np.testing.assert_allclose(results[t], alone[t], rtol=1e-5, atol=1e-6)


def test_gil_is_released_during_a_forward(minilm):
    # While one thread embeds a long batch, another thread keeps running Python.
    done = threading.Event()
    ticks = []

    def tick():
        while not done.is_set():
            ticks.append(1)
            done.wait(0.001)

    th = threading.Thread(target=tick)
    th.start()
    minilm.embed(["a long clinical note " * 20] * 64)
    done.set()
    th.join()
    assert len(ticks) > 5


def test_results_are_writable_arrays_and_held_tensors_export_read_only(lite0):
    # A forward's numpy answer is the only holder of its memory: writable, as numpy's own.
    x = np.random.default_rng(5).standard_normal((1, 224, 224, 3)).astype(np.float32)
    y = lite0.features(x)
    assert y.flags.writeable
    y *= 2.0
    # A medkern.Tensor the caller holds exports read-only (DLPack 1.x read-only flag).
    t = medkern.Tensor.from_dlpack(np.arange(6, dtype=np.float32))
    a = np.from_dlpack(t)
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0] = 1.0
    # Read-only arrays go in through the versioned capsule.
    ro = np.arange(4, dtype=np.int32)
    ro.flags.writeable = False
    np.testing.assert_array_equal(medkern.Tensor.from_dlpack(ro).numpy(), ro)
    # An unversioned consumer still gets a capsule.
    cap = t.__dlpack__()
    assert type(cap).__name__ == "PyCapsule"


def test_devices_are_shared_per_process():
    # One emulated GPU (one stream, one lock) however it is named.
    assert medkern.Device("emu") == medkern.Device("emu")
    t = medkern.Tensor.from_dlpack(np.ones(3, np.float32), device="emu")
    assert t.device == medkern.Device("emu")
    assert medkern.Device("cpu") == medkern.Device("cpu")
    assert medkern.Device("cpu") != medkern.Device("emu")
    with pytest.raises(TypeError):
        len(medkern.Tensor.from_dlpack(np.array(1.0, np.float32)))


def test_argument_refusals(minilm):
    with pytest.raises(medkern.InvalidInputError, match="sentence"):
        medkern.compress("/x", "/y", int8=True, sentences=[" "])
    with pytest.raises(TypeError, match="bool"):
        medkern.compress("/x", "/y", low_rank=True)
    # A sequence of 2-element lists is read as sentence pairs (then refused by a model with
    # no classification head, with medkern's message), not as a type error.
    with pytest.raises(medkern.MedkernError) as pairs:
        minilm.classify([["what is sepsis", "an infection response"]])
    with pytest.raises(medkern.MedkernError) as texts:
        minilm.classify(["what is sepsis"])
    assert str(pairs.value) and str(texts.value)
