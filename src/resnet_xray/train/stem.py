"""Data-dependent start for the stem: conv1 as a patch-whitening filter bank (airbench's trick).

Keller Jordan's airbench starts its first conv as the whitening transform of the training
images' patches: the principal directions of 2x2 patches, each scaled by one over the square
root of its variance, and each filter paired with its negative so a ReLU keeps both signs. Here the
same for ResNet's 7x7 stem: the top ``out_channels / 2`` eigenvectors of the covariance of
7x7x3 patches (normalised as the model sees them), scaled by ``1 / sqrt(eigenvalue + eps)``, and
their negatives. BatchNorm after the stem rescales as it learns; the conv keeps training.
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import XrayError


def patch_whitening_filters(images: torch.Tensor, kernel_size: int, n: int, *, stride: int = 4,
                            eps: float = 1e-2) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` whitening filters (n x C x k x k) of ``images``' k x k patches, largest variance first, and their eigenvalues."""
    dim = images.shape[1] * kernel_size * kernel_size
    total, outer, count = torch.zeros(dim, dtype=torch.float64), torch.zeros(dim, dim, dtype=torch.float64), 0
    for chunk in images.split(16):  # bounded memory: 224 px images give ~3000 patches each
        p = nn.functional.unfold(chunk.double(), kernel_size, stride=stride).transpose(1, 2).reshape(-1, dim)
        total += p.sum(0)
        outer += p.T @ p
        count += len(p)
    if count < dim:
        raise ValueError(f"{count} patches cannot estimate a {dim}-dimensional covariance")
    mean = total / count
    cov = outer / count - torch.outer(mean, mean)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    evals, evecs = evals.flip(0)[:n].clamp(min=0), evecs.flip(1)[:, :n]
    w = (evecs / torch.sqrt(evals + eps)).T
    return w.reshape(n, images.shape[1], kernel_size, kernel_size).float(), evals.float()


@torch.no_grad()
def whiten_stem(conv: nn.Conv2d, images: torch.Tensor, *, eps: float = 1e-2) -> torch.Tensor:
    """Overwrite ``conv``'s kernels with whitening filters of ``images`` (N x C x H x W, preprocessed) and their negatives.

    Returns the eigenvalues used. An odd channel count keeps its last kernel as it was.
    """
    k = conv.kernel_size[0]
    if conv.kernel_size[0] != conv.kernel_size[1] or conv.groups != 1:
        raise ValueError("whiten_stem needs a square, ungrouped convolution")
    half = conv.out_channels // 2
    dim = conv.in_channels * k * k

    def patches(stride: int) -> int:
        return len(images) * max(0, (images.shape[2] - k) // stride + 1) * max(0, (images.shape[3] - k) // stride + 1)

    # Every fourth position is plenty on real sets; small images or few of them take every one.
    stride = 4 if patches(4) >= 10 * dim else 1
    if patches(stride) < 2 * dim:
        raise XrayError(f"--stem-init whiten: {len(images)} training images of {images.shape[3]}x{images.shape[2]} px give "
                        f"{patches(stride)} {k}x{k} patches, too few to estimate their {dim}-dimensional covariance; "
                        f"use --stem-init default")
    w, evals = patch_whitening_filters(images, k, half, stride=stride, eps=eps)
    conv.weight[: 2 * half].copy_(torch.cat([w, -w]))
    if conv.bias is not None:
        conv.bias.zero_()
    return evals
