"""medkern from Python: compressed BERT-family encoders and clinical CNNs run by medkern's
hand-written CUDA kernels on an NVIDIA GPU, by its f64-accumulating reference on the CPU, or
on its emulated GPU.

    import medkern
    model = medkern.BertModel.load(".models/all-MiniLM-L6-v2", device="cpu")
    emb = model.embed(["chest pain", "shortness of breath"])   # numpy float32 [2, 384]

Arrays cross in both directions through DLPack: numpy arrays in give numpy arrays out;
torch / cupy tensors (or a medkern.Tensor) in give a medkern.Tensor out, which
``torch.from_dlpack`` reads without a copy. Every forward releases the GIL, and several
Python threads may share one model. Errors are ``medkern.MedkernError`` (bad input:
``medkern.InvalidInputError``, also a ``MedkernError``) with medkern's message.
"""

from ._native import (
    Autoencoder,
    BertModel,
    Device,
    EfficientNet,
    ExamModel,
    InvalidInputError,
    MedkernError,
    ResNet,
    SepsisNet,
    Tensor,
    __version__,
    compress,
)

__all__ = [
    "Autoencoder",
    "BertModel",
    "Device",
    "EfficientNet",
    "ExamModel",
    "InvalidInputError",
    "MedkernError",
    "ResNet",
    "SepsisNet",
    "Tensor",
    "__version__",
    "compress",
    "from_dlpack",
]


def from_dlpack(obj, device=None):
    """A medkern.Tensor over any DLPack producer (numpy, torch, cupy): CUDA memory is read in
    place (copied when not 256-byte aligned), host memory is copied."""
    return Tensor.from_dlpack(obj, device)
