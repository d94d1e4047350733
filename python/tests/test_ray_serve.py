"""The Ray Serve example (python/examples/ray_serve.py) on a local Ray instance over loopback:
concurrent HTTP requests are batched by @serve.batch into one medkern call, and each answer
equals the embedding of its text alone. A counted skip where Ray is missing or cannot start."""

import json
import os
import socket
import sys
import threading
import urllib.request

import numpy as np
import pytest

import medkern
from conftest import MINILM, ROOT, need

EXAMPLES = ROOT / "python" / "examples"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def serve_port():
    try:
        import ray
        from ray import serve
    except ImportError as e:
        pytest.skip(f"Ray is not installed: {e}")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            runtime_env={"env_vars": {"PYTHONPATH": str(EXAMPLES)}},
        )
    except Exception as e:  # noqa: BLE001 - any failure to start is the skip's reason
        pytest.skip(f"Ray cannot start on this machine: {e}")
    port = free_port()
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        yield port
    finally:
        serve.shutdown()
        ray.shutdown()


def test_ray_serve_batches_into_medkern(serve_port):
    from ray import serve

    sys.path.insert(0, str(EXAMPLES))
    import ray_serve as example

    handle = serve.run(example.app(str(need(MINILM))), route_prefix="/", blocking=False)
    texts = [f"patient {i}: temperature {38 + i % 3}.{i} C, heart rate {90 + i}" for i in range(16)]
    results, errors = {}, []

    def post(text):
        req = urllib.request.Request(
            f"http://127.0.0.1:{serve_port}/",
            data=json.dumps({"text": text}).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=120) as r:
                results[text] = json.load(r)["embedding"]
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    post(texts[0])  # the replica is up and warm
    threads = [threading.Thread(target=post, args=(t,)) for t in texts[1:]]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=180)
    assert not errors, errors
    assert set(results) == set(texts)
    model = medkern.BertModel.load(MINILM, device="cpu")
    for t in texts:
        np.testing.assert_allclose(np.float32(results[t]), model.embed(t), rtol=1e-5, atol=1e-6)
    stats = handle.stats.remote().result(timeout_s=60)
    assert stats["largest_batch"] > 1, stats
    assert stats["device"] == "cpu"
