"""`fastervlm show` on the tiny model: the picture is what the model kept, merging methods are drawn unmarked with
a legend that says so, LLM-stage methods are refused, --seed and --no-heatmap work."""

from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from fastervlm.cli import main
from fastervlm.models.base import GenerationSettings
from fastervlm.show import Layout, answer_header, render_answer, veiled
from fastervlm.show.panels import outline_width


def _answer(pipeline, frames, method: str, **settings):  # noqa: ANN001, ANN202
    return pipeline.run([frames], ["q"], pipeline.pruner(method, **settings),
                                  GenerationSettings(max_new_tokens=1))[0]


def _show(tiny_checkpoint, video, out, *extra: str) -> int:  # noqa: ANN001
    return main(["show", "--model", str(tiny_checkpoint), "--device", "cpu", "--video", str(video),
                 "--out", str(out), "--scale", "1", *extra])


def _interiors(tile: np.ndarray, grid: int) -> np.ndarray:
    """(grid * grid, cell - 2w, cell - 2w, 3): each patch cell's pixels inside the outline width."""
    cell = tile.shape[0] // grid
    width = outline_width(cell)
    cells = tile.astype(np.float32).reshape(grid, cell, grid, cell, 3).transpose(0, 2, 1, 3, 4)
    return cells.reshape(grid * grid, cell, cell, 3)[:, width:-width, width:-width]


def test_show_command_draws_what_the_model_kept(tmp_path, tiny_checkpoint, tiny_pipeline, synthetic_video) -> None:
    out, gif = tmp_path / "kept.png", tmp_path / "kept.gif"
    assert _show(tiny_checkpoint, synthetic_video, out, "--reduction", "0.75", "--animation", str(gif)) == 0
    frames = tiny_pipeline.frames(video=synthetic_video)
    answer = _answer(tiny_pipeline, frames, "fastervlm", reduction=0.75)
    side, grid = frames.pixels.shape[-1], math.isqrt(tiny_pipeline.num_patches)
    layout = Layout(scale=1).fit_header(answer_header(tiny_pipeline, answer, heatmap=True), tiny_pipeline.num_frames, side)
    with Image.open(out) as picture:
        assert picture.size == layout.size(tiny_pipeline.num_frames, side, heatmap=True)
        drawn = np.asarray(picture.convert("RGB"))
    np.testing.assert_array_equal(drawn, np.asarray(render_answer(tiny_pipeline, frames, answer, layout=Layout(scale=1))))
    seen = tiny_pipeline.display_frames(frames)
    for t, kept in enumerate(answer.kept_indices):
        assert len(kept) == 16
        left, top, right, bottom = layout.tile_box(t, side, heatmap=True)
        cells, source = _interiors(drawn[top:bottom, left:right], grid), _interiors(seen[t], grid)
        as_is = {i for i in range(grid * grid) if np.array_equal(cells[i], source[i])}
        greyed = {i for i in range(grid * grid) if np.array_equal(cells[i], np.rint(veiled(source[i])))}
        assert as_is == set(kept) and greyed == set(range(grid * grid)) - set(kept)
    with Image.open(gif) as animation:
        assert animation.n_frames == tiny_pipeline.num_frames


def test_a_merging_method_is_drawn_as_its_merged_groups(tmp_path, tiny_checkpoint, tiny_pipeline,
                                                        synthetic_video) -> None:
    """pool's tokens are rectangles of patches: each rectangle is one merged group, no patch is kept or pruned."""
    out = tmp_path / "pool.png"
    assert _show(tiny_checkpoint, synthetic_video, out, "--method", "pool", "--reduction", "0.75") == 0
    frames = tiny_pipeline.frames(video=synthetic_video)
    answer = _answer(tiny_pipeline, frames, "pool", reduction=0.75)
    assert answer.kept_indices is None
    assert all(token >= 0 for frame in answer.merge_groups for token in frame)  # every patch is in a rectangle
    assert len({token for frame in answer.merge_groups for token in frame}) == answer.visual_tokens
    header = answer_header(tiny_pipeline, answer, heatmap=True, borrowed=True)
    texts = [item.text for item in header.legend]
    assert not any(item.swatch in ("kept", "pruned") for item in header.legend)  # no patch kept as itself or pruned
    assert any(item.swatch == "merged" for item in header.legend)
    assert any("pool does not use it" in text for text in texts)  # the heatmap is another pass's
    side = frames.pixels.shape[-1]
    layout = Layout(scale=1).fit_header(header, tiny_pipeline.num_frames, side)
    with Image.open(out) as picture:
        drawn = np.asarray(picture.convert("RGB"))
    left, top, right, bottom = layout.tile_box(0, side, heatmap=True)
    assert not np.array_equal(drawn[top:bottom, left:right], tiny_pipeline.display_frames(frames)[0])  # tinted


def test_a_method_inside_the_llm_is_refused(tmp_path, tiny_checkpoint, synthetic_video, capsys) -> None:
    assert _show(tiny_checkpoint, synthetic_video, tmp_path / "x.png", "--method", "fastv", "--reduction", "0.75") == 2
    error = capsys.readouterr().err
    assert "prunes inside the LLM" in error and "fastervlm" in error and "pool" in error
    assert not (tmp_path / "x.png").exists()


def test_seed_seeds_a_random_method_and_no_heatmap_drops_the_panels(tmp_path, tiny_checkpoint, tiny_pipeline,
                                                                    synthetic_video) -> None:
    frames = tiny_pipeline.frames(video=synthetic_video)
    pictures = {}
    for seed in (3, 4):
        out = tmp_path / f"random{seed}.png"
        assert _show(tiny_checkpoint, synthetic_video, out, "--method", "random", "--keep", "5", "--seed", str(seed),
                     "--no-heatmap") == 0
        answer = _answer(tiny_pipeline, frames, "random", keep=5, seed=seed)
        with Image.open(out) as picture:
            pictures[seed] = np.asarray(picture.convert("RGB"))
        expected = render_answer(tiny_pipeline, frames, answer, heatmap=False, layout=Layout(scale=1))
        np.testing.assert_array_equal(pictures[seed], np.asarray(expected))
        side = frames.pixels.shape[-1]
        layout = Layout(scale=1).fit_header(answer_header(tiny_pipeline, answer, heatmap=False), 8, side)
        assert expected.size == layout.size(tiny_pipeline.num_frames, side, heatmap=False)
    assert not np.array_equal(pictures[3], pictures[4])


def test_a_method_without_scores_borrows_the_heatmap(tmp_path, tiny_checkpoint, tiny_pipeline, synthetic_video) -> None:
    from fastervlm.show import heatmap_scores

    frames = tiny_pipeline.frames(video=synthetic_video)
    scores = heatmap_scores(tiny_pipeline, frames)
    reference = _answer(tiny_pipeline, frames, "fastervlm", keep=3)
    assert scores is not None and np.allclose(scores.numpy(), reference.cls_scores.numpy())
    out = tmp_path / "random.png"
    assert _show(tiny_checkpoint, synthetic_video, out, "--method", "random", "--keep", "5") == 0
    answer = _answer(tiny_pipeline, frames, "random", keep=5)
    with Image.open(out) as picture:
        np.testing.assert_array_equal(np.asarray(picture.convert("RGB")), np.asarray(
            render_answer(tiny_pipeline, frames, answer, cls_scores=scores, layout=Layout(scale=1))))


@pytest.mark.parametrize("reduction", ["0.5", "0.9", "0.95"])
def test_every_budget_marks_its_count(tmp_path, tiny_checkpoint, synthetic_video, capsys, reduction: str) -> None:
    assert _show(tiny_checkpoint, synthetic_video, tmp_path / "k.png", "--reduction", reduction) == 0
    keep = math.floor(64 * (1 - float(reduction)) + 0.5)
    assert f"{8 * keep} visual tokens kept" in capsys.readouterr().err
