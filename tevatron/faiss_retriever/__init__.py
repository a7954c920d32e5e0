"""Exact inner-product retrieval over passage encodings (``python -m tevatron.faiss_retriever``) and the
reducer that merges per-shard results (``python -m tevatron.faiss_retriever.reducer``)."""
