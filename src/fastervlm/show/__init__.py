"""Pictures of what a pruning method kept: the sampled frames as the model saw them, kept patches outlined, merged
ones tinted by token and pruned ones muted, each frame's [CLS] attention as a heatmap panel below it, and a legend;
PNG (Pillow) or SVG/PDF (matplotlib).

    from fastervlm.show import render_answer
    frames = pipeline.frames(video="clip.mp4")
    answer = pipeline.run([frames], [question], pipeline.pruner("fastervlm", reduction=0.9))[0]
    render_answer(pipeline, frames, answer).save("kept.png")
    save_answer_picture("kept.pdf", pipeline, frames, answer)     # or .svg, .png: chosen by the suffix

- `layout.py`: where everything goes (`Layout`), the header's lines in whole phrases;
- `panels.py`: the pixels (frame panel, heatmap panel, legend swatches, colour bar);
- `render.py`: `render_kept_tokens` / `write_kept_tokens_animation`, free of any model (arrays in, image out);
- `vector.py`: `write_kept_tokens_figure`, the same picture as SVG or PDF with a labelled colour bar;
- `answers.py`: from an Answer (`render_answer`, `write_answer_animation`, `heatmap_scores`), asking the
  registry what each method does.
"""

from fastervlm.show.answers import (
    answer_header,
    answer_notes,
    check_showable,
    describe_selection,
    heatmap_scores,
    render_answer,
    save_answer_picture,
    score_name,
    selection_notes,
    showable_methods,
    write_answer_animation,
)
from fastervlm.show.layout import Header, Layout, LegendItem
from fastervlm.show.panels import COLORMAP, GROUP_COLOURS, OUTLINE, VEIL, VEIL_GREY, veiled
from fastervlm.show.render import CLS_ATTENTION, RECEIVED_ATTENTION, render_kept_tokens, write_kept_tokens_animation
from fastervlm.show.vector import VECTOR_SUFFIXES, write_kept_tokens_figure

__all__ = [
    "CLS_ATTENTION", "COLORMAP", "GROUP_COLOURS", "OUTLINE", "RECEIVED_ATTENTION", "VECTOR_SUFFIXES", "VEIL",
    "VEIL_GREY", "Header", "Layout", "LegendItem", "answer_header", "answer_notes", "check_showable",
    "describe_selection", "heatmap_scores", "render_answer", "render_kept_tokens", "save_answer_picture", "score_name",
    "selection_notes", "showable_methods", "veiled", "write_answer_animation", "write_kept_tokens_animation",
    "write_kept_tokens_figure",
]
