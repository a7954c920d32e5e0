"""``python -m tevatron.faiss_retriever``: search query encodings against passage encodings."""
from tevatron.faiss_retriever.retriever import main

if __name__ == "__main__":
    raise SystemExit(main())
