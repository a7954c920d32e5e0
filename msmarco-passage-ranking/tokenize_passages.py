#!/usr/bin/env python
"""Tokenise the corpus into split00.json ... encoder inputs (see tevatron/preprocess/tokenize.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tevatron.preprocess.tokenize import passages_main  # noqa: E402

if __name__ == "__main__":
    sys.exit(passages_main())
