"""fastervlm inside other evaluation harnesses (lmms-eval: `integrations/lmms_eval.py`).

Importing this package imports no harness: each integration module imports its own harness, and only it does.
"""
