"""`fastervlm show` as SVG and PDF: valid files with the frames and heatmaps as images, vector outlines, a colour
bar labelled with what the score is; the command picks the format by the suffix; pruned patches stay legible at
90% reduction."""

from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from PIL import Image

from fastervlm.cli import main
from fastervlm.errors import FasterVLMError
from fastervlm.models.base import GenerationSettings
from fastervlm.show import (CLS_ATTENTION, RECEIVED_ATTENTION, Layout, answer_header, write_kept_tokens_figure)
from fastervlm.show.panels import LUMA, outline_width
from fastervlm.show.vector import COLOUR_BAR_ID, border_runs

SVG = "{http://www.w3.org/2000/svg}"
FRAMES, SIDE, GRID = 5, 24, 4


def _inputs(seed: int = 0) -> tuple[np.ndarray, list[list[int]], np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(FRAMES, SIDE, SIDE, 3), dtype=np.uint8)
    kept = [sorted(rng.choice(GRID * GRID, size=3, replace=False).tolist()) for _ in range(FRAMES)]
    return frames, kept, rng.random((FRAMES, GRID * GRID))


def _svg(path) -> ET.Element:  # noqa: ANN001
    return ET.parse(path).getroot()


def _text(element: ET.Element) -> str:
    return " ".join("".join(t.itertext()) for t in element.iter(f"{SVG}text"))


@pytest.mark.parametrize("score_name", [CLS_ATTENTION, RECEIVED_ATTENTION])
def test_svg_has_the_images_the_outlines_and_a_labelled_colour_bar(tmp_path, score_name: str) -> None:
    frames, kept, scores = _inputs()
    path = write_kept_tokens_figure(tmp_path / "kept.svg", frames, kept, scores, GRID, "fastervlm | L=3/frame",
                                    score_name=score_name, layout=Layout(title_height=120))  # room for the legend
    root = _svg(path)
    assert root.tag == f"{SVG}svg"
    images = root.findall(f".//{SVG}image")
    tiles = [i for i in images if float(i.get("width")) == float(i.get("height")) == SIDE]  # not swatches or bars
    assert len(tiles) == 2 * FRAMES  # each frame and its heatmap
    bars = [g for g in root.iter(f"{SVG}g") if g.get("id") == COLOUR_BAR_ID]
    assert len(bars) == 1
    label = _text(bars[0])
    assert score_name in label and "rescaled per frame" in label
    assert {"0", "0.5", "1"} <= set(label.split())  # the ticks
    outlines = [p for p in root.iter(f"{SVG}path") if "stroke: #00beff" in (p.get("style") or "")]
    assert outlines, "kept regions must be outlined with vector lines"
    assert "fastervlm" in _text(root) and "kept patch (outlined)" in _text(root)  # text stays text


def test_pdf_is_one_page_with_the_images(tmp_path) -> None:
    frames, kept, scores = _inputs(1)
    path = write_kept_tokens_figure(tmp_path / "kept.pdf", frames, kept, scores, GRID, "t")
    data = path.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert len(re.findall(rb"/Type\s*/Page\b", data)) == 1
    assert len(re.findall(rb"/Subtype\s*/Image", data)) >= 2 * FRAMES
    without = write_kept_tokens_figure(tmp_path / "plain.pdf", frames, kept, None, GRID, "t")  # no heatmap
    assert len(re.findall(rb"/Subtype\s*/Image", without.read_bytes())) < 2 * FRAMES


def test_a_vector_picture_needs_a_vector_suffix(tmp_path) -> None:
    frames, kept, scores = _inputs()
    with pytest.raises(FasterVLMError, match=r"\.svg or \.pdf"):
        write_kept_tokens_figure(tmp_path / "kept.png", frames, kept, scores, GRID)


def test_border_runs_join_each_straight_side() -> None:
    mask = np.zeros((4, 4), dtype=bool)
    mask[1:3, 0:3] = True  # a 2 x 3 block against the left edge
    mask[0, 3] = True  # a lone cell in the corner
    runs = sorted(border_runs(mask))
    assert runs == sorted([("h", 1, 0, 3, 1), ("h", 3, 0, 3, -1), ("v", 0, 1, 3, 1), ("v", 3, 1, 3, -1),
                           ("h", 0, 3, 4, 1), ("h", 1, 3, 4, -1), ("v", 3, 0, 1, 1), ("v", 4, 0, 1, -1)])


def _show(tiny_checkpoint, video, out, *extra: str) -> int:  # noqa: ANN001
    return main(["show", "--model", str(tiny_checkpoint), "--device", "cpu", "--video", str(video),
                 "--out", str(out), *extra])


@pytest.mark.parametrize("suffix", [".svg", ".pdf"])
def test_show_command_writes_vector_pictures_by_suffix(tmp_path, tiny_checkpoint, synthetic_video, capsys,
                                                       suffix: str) -> None:
    out = tmp_path / f"kept{suffix}"
    assert _show(tiny_checkpoint, synthetic_video, out, "--reduction", "0.9") == 0
    assert "48 visual tokens kept" in capsys.readouterr().err
    if suffix == ".svg":
        root = _svg(out)
        tiles = [i for i in root.findall(f".//{SVG}image") if float(i.get("width")) == float(i.get("height")) == 224]
        assert len(tiles) == 16  # 8 frames and their heatmaps, at the PNG's default 224 pixels
        assert any(g.get("id") == COLOUR_BAR_ID for g in root.iter(f"{SVG}g"))
    else:
        assert out.read_bytes().startswith(b"%PDF-")


def _interiors(tile: np.ndarray, grid: int) -> np.ndarray:
    """(grid * grid, pixels, 3): each patch cell's pixels inside the outline width."""
    cell = tile.shape[0] // grid
    width = outline_width(cell)
    cells = tile.astype(np.float32).reshape(grid, cell, grid, cell, 3).transpose(0, 2, 1, 3, 4)
    return cells.reshape(grid * grid, cell, cell, 3)[:, width:-width, width:-width].reshape(grid * grid, -1, 3)


def test_pruned_patches_stay_legible_at_90_percent(tmp_path, tiny_checkpoint, tiny_pipeline, synthetic_video) -> None:
    """At reduction 0.9 (58 of 64 patches pruned per frame) the pruned region keeps most of its contrast and its
    colour differences, and the kept patches stand out from it (drawn as they are)."""
    out = tmp_path / "kept.png"
    assert _show(tiny_checkpoint, synthetic_video, out, "--reduction", "0.9", "--scale", "1") == 0
    frames = tiny_pipeline.frames(video=synthetic_video)
    answer = tiny_pipeline.run([frames], ["q"], tiny_pipeline.pruner("fastervlm", reduction=0.9),
                                         GenerationSettings(max_new_tokens=1))[0]
    side, grid = frames.pixels.shape[-1], math.isqrt(tiny_pipeline.num_patches)
    layout = Layout(scale=1).fit_header(answer_header(tiny_pipeline, answer, heatmap=True), tiny_pipeline.num_frames, side)
    with Image.open(out) as picture:
        drawn = np.asarray(picture.convert("RGB"))
    seen = tiny_pipeline.display_frames(frames)
    for t, kept in enumerate(answer.kept_indices):
        pruned = sorted(set(range(grid * grid)) - set(kept))
        left, top, right, bottom = layout.tile_box(t, side, heatmap=True)
        shown = _interiors(drawn[top:bottom, left:right], grid)[pruned].reshape(-1, 3)
        source = _interiors(seen[t], grid)[pruned].reshape(-1, 3)
        luma_shown, luma_source = shown @ LUMA, source @ LUMA
        assert luma_shown.std() >= 0.6 * luma_source.std() and luma_shown.std() > 8  # contrast, not a blank veil
        hue_shown, hue_source = shown - luma_shown[:, None], source - luma_source[:, None]  # colour beyond brightness
        assert np.abs(hue_shown).mean() >= 0.3 * np.abs(hue_source).mean() > 0
        assert np.abs(shown - source).mean() > 20  # ... yet visibly not drawn as they are, unlike the kept ones
        kept_shown = _interiors(drawn[top:bottom, left:right], grid)[kept]
        np.testing.assert_array_equal(kept_shown, _interiors(seen[t], grid)[kept])
