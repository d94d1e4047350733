"""medkern on Ray Serve: one replica per GPU (or CPU replicas without one), each holding a
medkern.BertModel; concurrent requests are gathered by @serve.batch and embedded as ONE
medkern call (one packed batch, the GIL released while it runs).

    python python/examples/ray_serve.py .models/all-MiniLM-L6-v2
    curl -s localhost:8000/ -d '{"text": "chest pain"}'
"""

import asyncio
import sys
from typing import List

from ray import serve
from starlette.requests import Request

import medkern


@serve.deployment
class Embedder:
    def __init__(self, model_dir: str, device: str):
        self.model = medkern.BertModel.load(model_dir, device=device)
        self.largest_batch = 0

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def embed(self, texts: List[str]) -> List[List[float]]:
        self.largest_batch = max(self.largest_batch, len(texts))
        # A thread, so the replica's event loop keeps gathering the next batch meanwhile.
        emb = await asyncio.to_thread(self.model.embed, texts)
        return emb.tolist()

    async def __call__(self, request: Request) -> dict:
        body = await request.json()
        return {"embedding": await self.embed(body["text"])}

    def stats(self) -> dict:
        return {"largest_batch": self.largest_batch, "device": self.model.device.name}


def app(model_dir: str, gpus: int = 0, replicas_per_gpu: int = 1):
    """The application: `replicas_per_gpu` replicas on each of `gpus` GPUs (each replica
    takes a share of one GPU and runs on the GPU Ray assigns it: device "gpu" is the first
    visible), or one CPU replica when `gpus` is 0."""
    if gpus > 0:
        d = Embedder.options(
            num_replicas=gpus * replicas_per_gpu,
            ray_actor_options={"num_gpus": 1.0 / replicas_per_gpu},
        )
        return d.bind(model_dir, "gpu")
    return Embedder.options(num_replicas=1, ray_actor_options={"num_cpus": 1}).bind(model_dir, "cpu")


if __name__ == "__main__":
    import ray

    ray.init()
    gpus = int(ray.cluster_resources().get("GPU", 0))
    serve.run(app(sys.argv[1], gpus=gpus), blocking=True)
