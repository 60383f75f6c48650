"""Corpora: Megatron-LM's indexed dataset with its manifest and tokenizers (indexed.py), `flmplan data
prepare` (prepare.py), the corpus a run reads with its sources and mixture (corpus.py), and what a rank
reads of it step by step (loader.py).

May import: the planner, runtime.hooks, runtime.model. No torch at import time.
"""
