"""Model runtimes (transformers in-process, vLLM over HTTP): the only package that imports torch.

Prompt Guard 2 and the Llama topic classifier land here (issue 4); the walking skeleton does not
load any model yet, and nothing here claims to.
"""
