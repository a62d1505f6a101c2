"""Training data: records, loaders (JSONL / Parquet / Hub), corpus adapters, the synthetic memory-dialogue
generator, torch datasets and collators, and a pre-tokenisation cache.

Import from the submodules (``training.data.loaders`` ...); this package imports nothing heavy eagerly.
"""
