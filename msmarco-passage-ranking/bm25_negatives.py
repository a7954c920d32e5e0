#!/usr/bin/env python
"""BM25 training negatives and dev run with bm25s (see tevatron/preprocess/bm25.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tevatron.preprocess.bm25 import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
