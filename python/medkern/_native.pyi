"""Type stubs of medkern's extension module (python/src)."""

from os import PathLike
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import numpy.typing as npt

__version__: str

class MedkernError(RuntimeError): ...
class InvalidInputError(MedkernError): ...

DeviceLike = Union["Device", str, None]
ImageLike = Union[str, PathLike, bytes, bytearray, npt.NDArray[Any]]
ArrayLike = Any  # numpy array, nested lists, medkern.Tensor, or any DLPack producer

class Device:
    def __init__(self, spec: str = "best") -> None: ...
    @property
    def kind(self) -> str: ...
    @property
    def ordinal(self) -> Optional[int]: ...
    @property
    def name(self) -> str: ...
    def synchronize(self) -> None: ...
    def __eq__(self, other: object) -> bool: ...

class Tensor:
    @staticmethod
    def from_dlpack(obj: Any, device: DeviceLike = None) -> "Tensor": ...
    @property
    def shape(self) -> Tuple[int, ...]: ...
    @property
    def dtype(self) -> str: ...
    @property
    def device(self) -> Device: ...
    def to(self, device: DeviceLike) -> "Tensor": ...
    def numpy(self) -> npt.NDArray[Any]: ...
    def __dlpack__(
        self,
        *,
        stream: Optional[int] = None,
        max_version: Optional[Tuple[int, int]] = None,
        dl_device: Optional[Tuple[int, int]] = None,
        copy: Optional[bool] = None,
    ) -> Any: ...
    def __dlpack_device__(self) -> Tuple[int, int]: ...
    def __len__(self) -> int: ...

class BertModel:
    @staticmethod
    def load(
        path: Union[str, PathLike],
        device: DeviceLike = None,
        dtype: Optional[str] = None,
        pooling: Optional[str] = None,
        normalize: Optional[bool] = None,
        max_len: Optional[int] = None,
        revision: Optional[str] = None,
        max_batch: int = 4096,
    ) -> "BertModel": ...
    def embed(
        self,
        texts: Union[str, Sequence[str]],
        pooling: Optional[str] = None,
        normalize: Optional[bool] = None,
    ) -> npt.NDArray[np.float32]: ...
    def classify(
        self, inputs: Union[str, Tuple[str, str], Sequence[str], Sequence[Tuple[str, str]]]
    ) -> npt.NDArray[np.float32]: ...
    def tokenize(self, texts: Union[str, Sequence[str]]) -> List[List[int]]: ...
    @property
    def labels(self) -> List[str]: ...
    @property
    def dim(self) -> int: ...
    @property
    def max_len(self) -> int: ...
    @property
    def pooling(self) -> str: ...
    @property
    def normalize(self) -> bool: ...
    @property
    def device(self) -> Device: ...

class EfficientNet:
    @staticmethod
    def load(
        weights: Optional[Union[str, PathLike]] = None,
        variant: str = "lite0",
        device: DeviceLike = None,
        dtype: Optional[str] = None,
    ) -> "EfficientNet": ...
    def classify(
        self, images: Union[ImageLike, List[ImageLike]], top: int = 5, features: bool = False
    ) -> Union[Dict[str, Any], List[Dict[str, Any]]]: ...
    def preprocess(self, image: ImageLike) -> npt.NDArray[Any]: ...
    def forward(self, x: ArrayLike) -> Any: ...
    def features(self, x: ArrayLike) -> Any: ...
    @property
    def device(self) -> Device: ...
    @property
    def dtype(self) -> str: ...

class SepsisNet:
    @staticmethod
    def load(
        weights: Optional[Union[str, PathLike]] = None,
        device: DeviceLike = None,
        dtype: Optional[str] = None,
    ) -> "SepsisNet": ...
    def classify(
        self, images: Union[ImageLike, List[ImageLike]], features: bool = False
    ) -> Union[Dict[str, Any], List[Dict[str, Any]]]: ...
    def preprocess(self, image: ImageLike) -> npt.NDArray[Any]: ...
    def forward(self, x: ArrayLike) -> Dict[str, Any]: ...
    @property
    def device(self) -> Device: ...

class ResNet:
    @staticmethod
    def load(
        weights: Optional[Union[str, PathLike]] = None,
        depth: int = 18,
        num_classes: int = 1000,
        device: DeviceLike = None,
        dtype: Optional[str] = None,
    ) -> "ResNet": ...
    def forward(self, x: ArrayLike) -> Dict[str, Any]: ...
    @property
    def device(self) -> Device: ...

class Autoencoder:
    @staticmethod
    def load(
        weights: Optional[Union[str, PathLike]] = None,
        device: DeviceLike = None,
        dtype: Optional[str] = None,
    ) -> "Autoencoder": ...
    def forward(self, x: ArrayLike) -> Dict[str, Any]: ...
    @property
    def device(self) -> Device: ...

class ExamModel:
    @staticmethod
    def load(
        weights: Optional[Union[str, PathLike]] = None,
        device: DeviceLike = None,
        dtype: Optional[str] = None,
    ) -> "ExamModel": ...
    def assess(self, image: ImageLike, emr: Dict[str, Any]) -> Dict[str, Any]: ...
    @property
    def emr_features(self) -> List[str]: ...
    @property
    def device(self) -> Device: ...

def compress(
    model: Union[str, PathLike],
    out: Union[str, PathLike],
    *,
    heads: Optional[Dict[int, List[int]]] = None,
    prune_heads: Optional[int] = None,
    layers: Optional[Union[str, List[int]]] = None,
    sparse24: bool = False,
    int8: bool = False,
    low_rank: Optional[Union[int, float]] = None,
    bits: Optional[Union[int, str]] = None,
    budget: Optional[str] = None,
    embeddings: Optional[str] = None,
    sentences: Optional[List[str]] = None,
    device: DeviceLike = None,
    dtype: Optional[str] = None,
    max_batch: int = 4096,
) -> Dict[str, Any]: ...
