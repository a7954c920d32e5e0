#!/usr/bin/env python
"""Normalise MS MARCO / BEIR data into the marco/ folder layout (see tevatron/preprocess/layout.py)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from tevatron.preprocess.layout import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
