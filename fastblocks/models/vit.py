"""Vision Transformer (Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for
Image Recognition at Scale", ICLR 2021, arXiv:2010.11929): the image cut into 16x16 patches,
each linearly embedded (a 16x16/16 convolution), a learned class token prepended, learned
position embeddings added, a pre-norm transformer encoder (LayerNorm -> multi-head
self-attention -> residual, LayerNorm -> MLP with GELU -> residual), the class token's final
state classified. ``vit_b_16``: 12 layers, width 768, 12 heads, MLP 3072 (86.6M parameters;
names and shapes as torchvision's, so its checkpoints load); ``vit_tiny_16``: width 192,
3 heads, MLP 768 (DeiT-Ti's shape, Touvron et al. 2021: 5.7M).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ._registry import register_model

__all__ = ["VisionTransformer"]


class MLPBlock(nn.Sequential):
    def __init__(self, dim: int, mlp_dim: int, dropout: float) -> None:
        super().__init__(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Dropout(dropout),
                         nn.Linear(mlp_dim, dim), nn.Dropout(dropout))


class EncoderBlock(nn.Module):
    """Pre-norm transformer layer. Shapes: (N, L, dim) -> (N, L, dim)."""

    def __init__(self, num_heads: int, dim: int, mlp_dim: int, dropout: float, attention_dropout: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(dim, num_heads, dropout=attention_dropout,
                                                    batch_first=True)
        self.dropout = nn.Dropout(dropout)
        self.ln_2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, mlp_dim, dropout)

    def forward(self, x: Tensor) -> Tensor:
        y = self.ln_1(x)
        y, _ = self.self_attention(y, y, y, need_weights=False)
        x = x + self.dropout(y)
        return x + self.mlp(self.ln_2(x))


class Encoder(nn.Module):
    def __init__(self, seq_length: int, num_layers: int, num_heads: int, dim: int, mlp_dim: int,
                 dropout: float, attention_dropout: float) -> None:
        super().__init__()
        self.pos_embedding = nn.Parameter(torch.empty(1, seq_length, dim).normal_(std=0.02))
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.Sequential()
        for i in range(num_layers):
            self.layers.add_module(f"encoder_layer_{i}",
                                   EncoderBlock(num_heads, dim, mlp_dim, dropout, attention_dropout))
        self.ln = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: Tensor) -> Tensor:
        return self.ln(self.layers(self.dropout(x + self.pos_embedding)))


class VisionTransformer(nn.Module):
    """Shapes: (N, 3, image_size, image_size) -> (N, num_classes); image_size must be a multiple
    of patch_size (ValueError otherwise)."""

    def __init__(self, image_size: int = 224, patch_size: int = 16, num_layers: int = 12,
                 num_heads: int = 12, hidden_dim: int = 768, mlp_dim: int = 3072,
                 dropout: float = 0.0, attention_dropout: float = 0.0, num_classes: int = 1000) -> None:
        super().__init__()
        if image_size % patch_size:
            raise ValueError(f"image_size ({image_size}) must be a multiple of patch_size ({patch_size})")
        self.image_size, self.patch_size, self.hidden_dim = image_size, patch_size, hidden_dim
        self.conv_proj = nn.Conv2d(3, hidden_dim, patch_size, patch_size)
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        seq = (image_size // patch_size) ** 2 + 1
        self.encoder = Encoder(seq, num_layers, num_heads, hidden_dim, mlp_dim, dropout, attention_dropout)
        self.heads = nn.Sequential()
        self.heads.add_module("head", nn.Linear(hidden_dim, num_classes))
        fan_in = 3 * patch_size ** 2
        nn.init.trunc_normal_(self.conv_proj.weight, std=(1 / fan_in) ** 0.5)
        nn.init.zeros_(self.conv_proj.bias)
        nn.init.zeros_(self.heads.head.weight)
        nn.init.zeros_(self.heads.head.bias)

    def forward(self, x: Tensor) -> Tensor:
        n, _, h, w = x.shape
        if h != self.image_size or w != self.image_size:
            raise ValueError(f"input must be {self.image_size}x{self.image_size}, got {h}x{w}")
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(n, -1, -1), x], 1)
        return self.heads(self.encoder(x)[:, 0])


@register_model("vit_b_16", family="vit", paper="Dosovitskiy et al. 2021, ViT (arXiv:2010.11929)")
def vit_b_16(num_classes: int = 1000, image_size: int = 224, dropout: float = 0.0) -> VisionTransformer:
    return VisionTransformer(image_size, 16, 12, 12, 768, 3072, dropout, num_classes=num_classes)


@register_model("vit_tiny_16", family="vit",
                paper="Dosovitskiy et al. 2021, ViT; Touvron et al. 2021, DeiT-Ti shape")
def vit_tiny_16(num_classes: int = 1000, image_size: int = 224, dropout: float = 0.0) -> VisionTransformer:
    return VisionTransformer(image_size, 16, 12, 3, 192, 768, dropout, num_classes=num_classes)
