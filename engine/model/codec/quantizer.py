"""The split residual vector quantizer of Code2Wav, decode direction only.

Codebook 0 (semantic) and codebooks 1..15 (acoustic) have separate residual quantizers, each projecting its summed
codebook vectors from `codebook_dim // 2` up to `codebook_dim`. Module and buffer names follow the official
`SplitResidualVectorQuantizer` so that the checkpoint loads unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class EuclideanCodebook(nn.Module):
    """Centroids stored as EMA statistics: centroid = embedding_sum / usage (usage clamped at `eps`, as upstream)."""

    def __init__(self, dim: int, codebook_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer("cluster_usage", torch.ones(codebook_size))
        self.register_buffer("embedding_sum", torch.zeros(codebook_size, dim))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (...) -> vectors (..., dim). Gathers before dividing: the same per-element division as upstream,
        without materialising the whole codebook."""
        usage = self.cluster_usage.clamp(min=self.eps)
        return F.embedding(codes, self.embedding_sum) / usage[codes].unsqueeze(-1)


class VectorQuantization(nn.Module):
    def __init__(self, dim: int, codebook_size: int) -> None:
        super().__init__()
        self._codebook = EuclideanCodebook(dim, codebook_size)


class ResidualVectorQuantization(nn.Module):
    def __init__(self, num_quantizers: int, dim: int, codebook_size: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(VectorQuantization(dim, codebook_size) for _ in range(num_quantizers))


class ResidualVectorQuantizer(nn.Module):
    """Sum of `num_quantizers` codebook lookups, then a 1x1 projection to `output_dim`."""

    def __init__(self, num_quantizers: int, dim: int, output_dim: int, codebook_size: int) -> None:
        super().__init__()
        # input_proj serves only the training-time encode direction; it is kept so that the checkpoint loads strictly
        self.input_proj = nn.Conv1d(output_dim, dim, 1, bias=False)
        self.output_proj = nn.Conv1d(dim, output_dim, 1, bias=False)
        self.vq = ResidualVectorQuantization(num_quantizers, dim, codebook_size)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, T, n) -> (B, T, output_dim)."""
        quantized = self.vq.layers[0]._codebook.decode(codes[..., 0])
        for i in range(1, codes.shape[-1]):
            quantized = quantized + self.vq.layers[i]._codebook.decode(codes[..., i])
        return F.linear(quantized, self.output_proj.weight[..., 0])


class SplitResidualVectorQuantizer(nn.Module):
    """Codebook 0 through `rvq_first`, the others through `rvq_rest`; the two projections are summed."""

    def __init__(self, num_quantizers: int, codebook_dim: int, codebook_size: int) -> None:
        super().__init__()
        dim = codebook_dim // 2
        self.rvq_first = ResidualVectorQuantizer(1, dim, codebook_dim, codebook_size)
        self.rvq_rest = ResidualVectorQuantizer(num_quantizers - 1, dim, codebook_dim, codebook_size)

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        """codes (B, T, num_quantizers) int64 -> (B, T, codebook_dim)."""
        return self.rvq_first.decode(codes[..., :1]) + self.rvq_rest.decode(codes[..., 1:])
