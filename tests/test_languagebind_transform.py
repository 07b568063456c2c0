"""The LanguageBind video transform of original-format Video-LLaVA, checked against the original's (C, T, H, W)
chain and by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastervlm import media
from fastervlm.models.base import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD
from fastervlm.models.videollava import languagebind_transform


def original_chain(frames: np.ndarray, size: int, flip: bool) -> torch.Tensor:
    """The original's steps on (C, T, H, W), as pytorchvideo/torchvision run them; returned as (T, C, H, W)."""
    x = torch.from_numpy(frames).permute(3, 0, 1, 2) / 255.0
    mean = torch.as_tensor(OPENAI_CLIP_MEAN, dtype=x.dtype)
    std = torch.as_tensor(OPENAI_CLIP_STD, dtype=x.dtype)
    x = x.sub_(mean[:, None, None, None]).div_(std[:, None, None, None])
    _, _, h, w = x.shape
    if w < h:
        new_h, new_w = int(math.floor((float(h) / w) * size)), size
    else:
        new_h, new_w = size, int(math.floor((float(w) / h) * size))
    x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    i, j = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
    x = x[..., i : i + size, j : j + size]
    return (x.flip(-1) if flip else x).permute(1, 0, 2, 3)


# (1, 224, 251): the original's float formula gives floor(250.99999999999997) = 250, so even this one resizes
@pytest.mark.parametrize("shape", [(8, 96, 128), (3, 300, 200), (2, 224, 224), (1, 37, 501), (1, 224, 251)])
@pytest.mark.parametrize("flip", [False, True])
def test_transform_equals_the_original_layout(shape, flip):
    frames = np.random.default_rng(1).integers(0, 256, (*shape, 3), dtype=np.uint8)
    out = languagebind_transform(frames, flip=flip)
    assert out.shape == (shape[0], 3, 224, 224) and out.dtype == torch.float32 and out.is_contiguous()
    # equal up to float rounding: interpolate's kernels may order sums differently per layout and thread count
    torch.testing.assert_close(out, original_chain(frames, 224, flip), rtol=0, atol=1e-5)


def test_constant_frame_gives_the_normalised_value_everywhere():
    colour = np.array([200, 30, 111], np.uint8)
    frames = np.broadcast_to(colour, (2, 50, 70, 3)).copy()
    out = languagebind_transform(frames)
    expected = (torch.tensor(colour, dtype=torch.float32) / 255 - torch.tensor(OPENAI_CLIP_MEAN)) / torch.tensor(
        OPENAI_CLIP_STD
    )
    torch.testing.assert_close(out, expected.view(1, 3, 1, 1).expand(2, 3, 224, 224), rtol=0, atol=1e-6)


def unnormalise(out: torch.Tensor) -> np.ndarray:
    """Back to 0..255 values of the first channel."""
    return (out[:, 0] * OPENAI_CLIP_STD[0] + OPENAI_CLIP_MEAN[0]).mul(255).round().numpy()


@pytest.mark.parametrize(("extra", "first_kept"), [(26, 13), (28, 14), (29, 14), (31, 16)])
def test_centre_crop_offsets_round_half_to_even(extra, first_kept):
    """Pixels encode their column (or row); the crop keeps those from round(extra / 2) on, as torchvision."""
    wide = np.broadcast_to(np.arange(224 + extra, dtype=np.uint8)[None, None, :, None], (1, 224, 224 + extra, 3))
    kept = unnormalise(languagebind_transform(wide.copy()))
    np.testing.assert_array_equal(kept[0], np.broadcast_to(np.arange(first_kept, first_kept + 224), (224, 224)))
    tall = wide.transpose(0, 2, 1, 3)
    kept = unnormalise(languagebind_transform(tall.copy()))
    np.testing.assert_array_equal(kept[0].T, np.broadcast_to(np.arange(first_kept, first_kept + 224), (224, 224)))


def test_short_side_scale_keeps_floor_of_the_long_side():
    """96x128 -> 224x298 (floor(298.67)) then columns 37..260 survive: a column ramp shows which."""
    ramp = np.broadcast_to(np.arange(128, dtype=np.uint8)[None, None, :, None] * 2, (1, 96, 128, 3)).copy()
    out = languagebind_transform(ramp)
    x = torch.from_numpy(ramp).permute(0, 3, 1, 2).float()
    resized = F.interpolate(x, size=(224, 298), mode="bilinear", align_corners=False)[..., 37:261]
    np.testing.assert_allclose(unnormalise(out), resized[:, 0].round().numpy(), atol=1)


def test_flip_reverses_the_width_axis_of_every_frame(synthetic_video):
    frames = media.read_video_frames(synthetic_video, 4).frames
    plain, flipped = languagebind_transform(frames), languagebind_transform(frames, flip=True)
    assert torch.equal(flipped, plain.flip(-1)) and not torch.equal(flipped, plain)
