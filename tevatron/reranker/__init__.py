"""Cross-encoder reranker: train on the retriever's groups, rerank a run, score training groups (teacher)."""
