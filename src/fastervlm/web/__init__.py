"""The web demo (`fastervlm web`): a Gradio page over the public API. Needs the extra: pip install "fastervlm[web]".

- `settings.py`: the page's limits and defaults (from the command's flags).
- `ask.py`: one question about one upload under one or two configurations (pipeline + show, no gradio).
- `results.py`: a runs directory as the report table, its plot and a per-item browser (eval.report, no gradio).
- `app.py`: the gr.Blocks page wiring those to components, and `serve` (temporary folder, queue, launch).

Nothing else in the package imports this one; only `app.py` imports gradio.
"""
