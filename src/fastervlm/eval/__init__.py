"""The video-QA evaluation harness: benchmarks as data, resumable sharded predictions, an LLM judge with a
cache, exact and original-compatible metrics, and the seed's table.

    fastervlm eval predict -> <run>/predictions/*.jsonl
    fastervlm eval judge   -> <run>/judge/<judge-model>/judgments.jsonl
    fastervlm eval report  -> report.md / .csv / .json / .png

Modules: benchmarks (data), rundir (layout, resume, merge), predict, judge, metrics, report, sweep.
Nothing here is imported by `import fastervlm`; openai and matplotlib load inside the functions that use them.
"""
