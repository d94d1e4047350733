"""The CUDA DLPack paths, on a GPU with PyTorch: a torch CUDA tensor goes into a medkern
forward in place, the answer goes back to torch without a copy, ordered on the caller's
stream. Without a GPU (or a CUDA PyTorch) each test is a counted skip; MEDKERN_REQUIRE_GPU=1
makes it a failure. Also runs without pytest (`python3 test_gpu.py`, the GPU bundle's way)."""

import os

import numpy as np

try:
    import pytest
except ImportError:  # the GPU host may have no pytest
    pytest = None

import medkern


class Skip(Exception):
    pass


def gpu_and_torch():
    why = None
    try:
        import torch

        if not torch.cuda.is_available():
            why = "PyTorch sees no CUDA GPU"
    except ImportError:
        why = "no PyTorch"
    if why is None:
        try:
            return medkern.Device("gpu:0"), torch
        except medkern.MedkernError as e:
            why = f"medkern cannot open GPU 0: {e}"
    if os.environ.get("MEDKERN_REQUIRE_GPU") == "1":
        raise AssertionError(f"MEDKERN_REQUIRE_GPU=1 but {why}")
    if pytest is not None:
        pytest.skip(f"no GPU: {why}")
    raise Skip(why)


def test_torch_cuda_tensor_round_trip():
    dev, torch = gpu_and_torch()
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.int8, torch.uint8, torch.int32):
        x = (torch.randn(33, 257, device="cuda") * 20).to(dtype)
        t = medkern.Tensor.from_dlpack(x)
        assert t.device.kind == "gpu" and t.shape == (33, 257)
        y = torch.from_dlpack(t)  # no copy: the same device memory
        assert y.device.type == "cuda" and torch.equal(y.cpu(), x.cpu())
        # Unaligned (an offset view): copied, still equal.
        z = medkern.Tensor.from_dlpack(x.flatten()[1:])
        assert torch.equal(torch.from_dlpack(z).cpu(), x.flatten()[1:].cpu())


def test_forward_reads_torch_memory_in_place_on_the_callers_stream():
    dev, torch = gpu_and_torch()
    net = medkern.EfficientNet.load(variant="lite0", device=dev, dtype="float16")
    x = torch.randn(2, 224, 224, 3, device="cuda", dtype=torch.float16)
    s = torch.cuda.Stream()
    with torch.cuda.stream(s):
        x2 = x * 1.0  # pending work on a side stream; medkern must see its result
        out = net.forward(x2)
        logits = torch.from_dlpack(out)
    torch.cuda.synchronize()
    ref = net.forward(x.cpu().numpy())
    got = logits.float().cpu().numpy()
    assert got.shape == ref.shape == (2, 1000) and np.isfinite(got).all()
    # f16 through the whole network on both sides; the same input, so close.
    assert np.abs(got - ref).max() <= 0.05 * np.abs(ref).max() + 0.05


if __name__ == "__main__":
    pytest = None  # run as a script: skips are counted here, not raised as pytest's
    failed = skipped = passed = 0
    for name, f in list(globals().items()):
        if name.startswith("test_") and callable(f):
            try:
                f()
                passed += 1
                print(f"PASS {name}")
            except Skip as e:
                skipped += 1
                print(f"SKIP {name}: {e}")
            except Exception as e:  # noqa: BLE001 - reported and counted
                failed += 1
                print(f"FAIL {name}: {e!r}")
    print(f"python GPU tests: {passed} passed, {failed} failed, {skipped} skipped")
    raise SystemExit(1 if failed else 0)
