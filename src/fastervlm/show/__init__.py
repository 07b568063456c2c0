"""Pictures of what a pruning method kept: the sampled frames as the model saw them, kept patches outlined and
pruned ones greyed, each frame's [CLS] attention as a heatmap panel below it, and a legend.

    from fastervlm.show import render_answer
    frames = pipeline.frames(video="clip.mp4")
    answer = pipeline.run([frames], [question], pipeline.pruner("fastervlm", reduction=0.9))[0]
    render_answer(pipeline, frames, answer).save("kept.png")

- `layout.py`: where everything goes (`Layout`), the header's lines in whole phrases;
- `panels.py`: the pixels (frame panel, heatmap panel, legend swatches, colour bar);
- `render.py`: `render_kept_tokens` / `write_kept_tokens_animation`, free of any model (arrays in, image out);
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
    selection_notes,
    showable_methods,
    write_answer_animation,
)
from fastervlm.show.layout import Header, Layout, LegendItem
from fastervlm.show.panels import COLORMAP, OUTLINE, VEIL, VEIL_GREY, veiled
from fastervlm.show.render import render_kept_tokens, write_kept_tokens_animation

__all__ = [
    "COLORMAP", "OUTLINE", "VEIL", "VEIL_GREY", "Header", "Layout", "LegendItem", "answer_header", "answer_notes",
    "check_showable",
    "describe_selection", "heatmap_scores", "render_answer", "render_kept_tokens", "selection_notes",
    "showable_methods", "veiled", "write_answer_animation", "write_kept_tokens_animation",
]
