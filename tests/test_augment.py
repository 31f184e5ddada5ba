"""DiffAugment: what the discriminator sees, and that processes draw like one process."""
from __future__ import annotations

import pytest
import torch

from artengine.augment import diff_augment, parse_policy


def _images(n: int = 8, size: int = 16) -> torch.Tensor:
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(1)) * 2 - 1


@pytest.mark.parametrize("policy", ["color", "translation", "cutout", "color,translation,cutout"])
def test_slices_of_the_global_batch_draw_what_the_whole_batch_draws(policy):
    x = _images()
    parts = parse_policy(policy)
    torch.manual_seed(0)
    whole = diff_augment(x, parts, slice(0, 8), 8)
    halves = []
    for rows in (slice(0, 4), slice(4, 8)):
        torch.manual_seed(0)
        halves.append(diff_augment(x[rows], parts, rows, 8))
    assert torch.equal(torch.cat(halves), whole)
    assert whole.shape == x.shape


def test_translation_shifts_content_and_fills_zeros():
    x = torch.ones(64, 3, 16, 16)
    torch.manual_seed(0)
    out = diff_augment(x, ("translation",), slice(0, 64), 64)
    zero_share = (out == 0).float().mean(dim=(1, 2, 3))
    assert zero_share.max() > 0 and zero_share.max() <= 1 - (14 / 16) ** 2 + 1e-6  # at most 2 px each way
    assert set(out.unique().tolist()) <= {0.0, 1.0}


def test_cutout_zeroes_at_most_a_quarter():
    x = torch.ones(64, 3, 16, 16)
    torch.manual_seed(0)
    zero_share = (diff_augment(x, ("cutout",), slice(0, 64), 64) == 0).float().mean(dim=(1, 2, 3))
    assert zero_share.max() == pytest.approx(0.25) and zero_share.min() > 0


def test_augmentation_is_differentiable():
    x = _images().requires_grad_(True)
    diff_augment(x, parse_policy("color,translation,cutout"), slice(0, 8), 8).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unknown_policy_is_refused():
    with pytest.raises(ValueError, match="flip"):
        parse_policy("translation,flip")
    assert parse_policy("") == ()
