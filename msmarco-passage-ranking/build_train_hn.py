#!/usr/bin/env python
"""Tokenised training groups from a dense ranking's hard negatives (see tevatron/preprocess/build_train_hn.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tevatron.preprocess.build_train_hn import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
