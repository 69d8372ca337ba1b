"""Causal convolution blocks of Code2Wav, each able to run on a chunk given the left tail of its input.

Streaming state is the input tail each conv needs from the past: `(kernel - 1) * dilation` frames for a causal conv,
`ceil(kernel / stride) - 1` frames for a transposed conv (whose output overlap the official code trims on the right).
A zero tail is exactly the official zero left padding, so the first chunk needs no special case. Convs with a tail
get a `slot` in `DecoderState.tails`; `forward` reads `tails[slot]` and writes the new tail back into the same list.
Module names follow the official `Qwen3TTSTokenizerV2*` classes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CausalConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int, dilation: int = 1, groups: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv1d(cin, cout, kernel_size, dilation=dilation, groups=groups)
        self.context = (kernel_size - 1) * dilation
        self.slot = -1  # index into DecoderState.tails, assigned by Code2Wav

    def forward(self, x: torch.Tensor, tails: list[torch.Tensor]) -> torch.Tensor:
        if self.context:
            x = torch.cat([tails[self.slot], x], dim=-1)
            tails[self.slot] = x[..., x.shape[-1] - self.context :]
        return self.conv(x)


class CausalTransConv(nn.Module):
    def __init__(self, cin: int, cout: int, kernel_size: int, stride: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose1d(cin, cout, kernel_size, stride=stride)
        self.stride = stride
        self.context = math.ceil(kernel_size / stride) - 1
        self.slot = -1

    def forward(self, x: torch.Tensor, tails: list[torch.Tensor]) -> torch.Tensor:
        t = x.shape[-1]
        if self.context:
            x = torch.cat([tails[self.slot], x], dim=-1)
            tails[self.slot] = x[..., x.shape[-1] - self.context :]
        start = self.context * self.stride
        return self.conv(x)[..., start : start + t * self.stride]


class SnakeBeta(nn.Module):
    """x + sin^2(x * e^alpha) / e^beta, per channel (log-scale parameters, as upstream)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(dim))
        self.beta = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.exp()[None, :, None]
        beta = self.beta.exp()[None, :, None]
        return x + (1.0 / (beta + 1e-9)) * torch.sin(x * alpha).pow(2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dwconv = CausalConv(dim, dim, 7, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-6))

    def forward(self, x: torch.Tensor, tails: list[torch.Tensor]) -> torch.Tensor:
        h = self.dwconv(x, tails).transpose(1, 2)
        h = self.pwconv2(F.gelu(self.pwconv1(self.norm(h))))
        return x + (self.gamma * h).transpose(1, 2)


class ResidualUnit(nn.Module):
    def __init__(self, dim: int, dilation: int) -> None:
        super().__init__()
        self.act1 = SnakeBeta(dim)
        self.conv1 = CausalConv(dim, dim, 7, dilation=dilation)
        self.act2 = SnakeBeta(dim)
        self.conv2 = CausalConv(dim, dim, 1)

    def forward(self, x: torch.Tensor, tails: list[torch.Tensor]) -> torch.Tensor:
        h = self.conv1(self.act1(x), tails)
        return x + self.conv2(self.act2(h), tails)


class DecoderBlock(nn.Module):
    """SnakeBeta, an upsampling transposed conv (kernel 2 * rate), then residual units with dilations 1, 3, 9."""

    def __init__(self, cin: int, cout: int, rate: int) -> None:
        super().__init__()
        units = [ResidualUnit(cout, d) for d in (1, 3, 9)]
        self.block = nn.ModuleList([SnakeBeta(cin), CausalTransConv(cin, cout, 2 * rate, rate), *units])

    def forward(self, x: torch.Tensor, tails: list[torch.Tensor]) -> torch.Tensor:
        for layer in self.block:
            x = layer(x) if isinstance(layer, SnakeBeta) else layer(x, tails)
        return x
