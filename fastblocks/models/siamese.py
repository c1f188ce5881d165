"""Siamese network (Bromley et al., "Signature Verification using a Siamese Time Delay Neural
Network", NIPS 1993; Chopra, Hadsell & LeCun, "Learning a Similarity Metric
Discriminatively", CVPR 2005): one encoder with shared weights embeds both inputs; the pair
is compared by the distance of the embeddings, trained with the contrastive loss
(Hadsell, Chopra & LeCun, CVPR 2006): ``y * d^2 + (1 - y) * max(margin - d, 0)^2``, y = 1 for
a similar pair.
"""
from __future__ import annotations


import torch.nn.functional as F
from torch import Tensor, nn

from ._registry import create_model, model_info, register_model

__all__ = ["SiameseNetwork", "contrastive_loss"]


class SiameseNetwork(nn.Module):
    """``forward(x1, x2) -> (e1, e2, distance)``; a single input gives its embedding.

    Args: backbone: any registered model name (its classifier output is the embedding input),
        embedding_dim: size of the projection after it; distance: "euclidean" or "cosine".
    Shapes: x1, x2 (N, C, H, W) -> e1, e2 (N, embedding_dim), distance (N,).
    """

    def __init__(self, backbone: str = "resnet18", embedding_dim: int = 128,
                 distance: str = "euclidean", **backbone_kwargs) -> None:
        super().__init__()
        if distance not in ("euclidean", "cosine"):
            raise ValueError(f"distance must be 'euclidean' or 'cosine', got {distance!r}")
        if backbone == "siamese":
            raise ValueError("backbone must be a model other than siamese")
        self.encoder = create_model(backbone, fused=False, num_classes=embedding_dim, **backbone_kwargs)
        self.input_size = model_info(backbone).input_size
        self.distance = distance

    def embed(self, x: Tensor) -> Tensor:
        return self.encoder(x)

    def forward(self, x1: Tensor, x2: Tensor | None = None):
        e1 = self.embed(x1)
        if x2 is None:
            return e1
        e2 = self.embed(x2)
        if self.distance == "euclidean":
            d = (e1 - e2).pow(2).sum(1).clamp_min(1e-12).sqrt()
        else:
            d = 1 - F.cosine_similarity(e1, e2, dim=1)
        return e1, e2, d


def contrastive_loss(distance: Tensor, similar: Tensor, margin: float = 1.0) -> Tensor:
    """Mean of ``y * d^2 + (1 - y) * relu(margin - d)^2``; distance (N,), similar (N,) in {0, 1}."""
    if margin <= 0:
        raise ValueError(f"margin must be positive, got {margin}")
    y = similar.to(distance.dtype)
    return (y * distance.pow(2) + (1 - y) * F.relu(margin - distance).pow(2)).mean()


@register_model("siamese", family="siamese", input_size=(3, 224, 224),
                paper="Bromley et al. 1993; Hadsell et al. 2006 (contrastive loss)")
def siamese(num_classes: int = 128, backbone: str = "resnet18", distance: str = "euclidean",
            **kwargs) -> SiameseNetwork:
    """``num_classes`` is the embedding size."""
    return SiameseNetwork(backbone, num_classes, distance, **kwargs)


