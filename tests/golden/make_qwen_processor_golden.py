"""Writes qwen_processor_golden.npz: the stock Qwen2.5-VL / Qwen3-VL processors' outputs (torchvision) on a tiny
synthetic clip, which tests/test_qwen_processor.py holds fastervlm's torchvision-free frames and prompts to.

Run it with a Python that has torch, torchvision and the transformers version the tests use, on the tiny
checkpoints this package writes (their processor configs, tokenizer and chat template), e.g.:

    python -c "from fastervlm.tiny.hf import write_tiny_hf_checkpoint as w; w('/tmp/q25', 'qwen2_5_vl'); w('/tmp/q3', 'qwen3_vl')"
    /path/to/venv-with-torchvision/bin/python tests/golden/make_qwen_processor_golden.py /tmp/q25 /tmp/q3
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("qwen_processor_golden.npz")
METADATA = {"total_num_frames": 40, "fps": 10.0, "frames_indices": [0, 13, 26, 39]}
"""4 frames of a 4-second, 10 fps clip: 1 sampled frame per second; timestamps 0.65 and 3.25 s per temporal patch."""
TIGHT = {"qwen2_5_vl": {"size": {"shortest_edge": 28 * 28, "longest_edge": 28 * 28}, "cap_pixels_per_frame": True},
         "qwen3_vl": {"size": {"shortest_edge": 32 * 32, "longest_edge": 4 * 32 * 32}, "cap_pixels_per_frame": True}}
"""A second setting per family that shrinks the clip (antialiased downscaling, the per-frame cap)."""


def clip() -> np.ndarray:
    """(4, 30, 44, 3) uint8: smooth gradients with a moving square, so resizing has edges to get right."""
    y, x = np.mgrid[0:30, 0:44]
    frames = []
    for t in range(4):
        frame = np.stack([(x * 5 + t * 20) % 256, (y * 8) % 256, ((x + y) * 3 + 60 * t) % 256], axis=-1)
        frame[5 + t * 3: 15 + t * 3, 10 + t * 5: 22 + t * 5] = (250, 30, 30)
        frames.append(frame)
    return np.asarray(frames, dtype=np.uint8)


def main(folders: list[str]) -> None:
    import torch
    from transformers import AutoProcessor, AutoVideoProcessor

    frames, out = clip(), {}
    out["frames"] = frames
    for folder in map(Path, folders):
        family = json.loads((folder / "config.json").read_text())["model_type"]
        processor = AutoProcessor.from_pretrained(folder)
        messages = [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "What is it?"}]}]
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        full = processor(text=[text], videos=[frames], video_metadata=[METADATA], do_sample_frames=False,
                         return_tensors="pt")
        for key, value in full.items():
            out[f"{family}/{key}"] = value.numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        tight = AutoVideoProcessor.from_pretrained(folder, **TIGHT[family])
        small = tight(videos=[frames], video_metadata=[METADATA], do_sample_frames=False, return_tensors="pt")
        out[f"{family}/tight/pixel_values_videos"] = small["pixel_values_videos"].numpy()
        out[f"{family}/tight/video_grid_thw"] = small["video_grid_thw"].numpy()
    np.savez_compressed(OUT, **out)
    print(OUT, {key: value.shape for key, value in out.items()})


if __name__ == "__main__":
    main(sys.argv[1:])
