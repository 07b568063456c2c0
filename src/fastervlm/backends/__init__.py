"""Engines other than transformers that can run the LLM stage.

`fastervlm.backends.vllm.VLLMEngine` runs it in vLLM from prompt embeddings. Nothing here is imported by
`import fastervlm`: a backend loads its engine inside the calls that need it.
"""
