"""The video-QA evaluation harness: benchmarks as data, resumable sharded predictions, an LLM judge with a
cache, exact and original-compatible metrics, and the seed's table.

    fastervlm eval predict -> <run>/predictions/*.jsonl
    fastervlm eval judge   -> <run>/judge/<judge-model>/judgments.jsonl
    fastervlm eval report  -> report.md / .csv / .json / .png

Modules: benchmarks (definitions: the packaged files in benchmark_defs/, and user files), storage (atomic and
append-only writes, one error for a folder that refuses them), rundir (layout, resume, grow, merge), predict
(runs, summaries, torchrun), grouped (video by video, batched, several configurations in one pass),
prompt (the judge's verbatim prompt), judge_client (one endpoint: retries, breaker), judge_cache (keys, cache),
judge (judging runs), metrics, reading (one run through one judge), report (the table), compare (paired tests),
sweep (the grid: predict -> judge -> report).
Nothing here is imported by `import fastervlm`; openai and matplotlib load inside the functions that use them.
"""
