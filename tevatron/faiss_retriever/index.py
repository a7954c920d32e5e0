"""Compressed and graph FAISS indexes (``--index FACTORY``): build, save, reuse, search.

``--index Flat`` (the default) is exact search and does not come here (see ``retriever``).  Any other
FAISS index-factory string (``HNSW32``, ``IVF4096,Flat``, ``IVF4096,PQ64``, ``SQ8``,
``OPQ64,IVF4096,PQ64``, ...) is built with the inner-product metric (normalised vectors: cosine):

* trained on a seeded random sample of ``--index_train_size`` passages drawn from all matched shards
  (all passages when there are fewer), widened to float32;
* every passage added in shard order, so FAISS ids are the same positions exact search uses;
* saved with ``faiss.write_index`` (atomically) to ``--index_path``, by default beside the passage
  encodings (:func:`default_index_path`), with a sidecar provenance record: the passage encodings'
  identities and records, the factory string, the training sample size and seed.  A later run reuses
  the file only when that record equals the one it would write; otherwise it says in one line what
  changed and rebuilds.

Search-time knobs (``--nprobe`` for IVF, ``--ef_search`` for HNSW) are set through
``faiss.ParameterSpace``; a knob the index does not have is refused in one line rather than ignored, so
a run never looks tuned when it is not.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from tevatron.cli import CommandError
from tevatron.faiss_retriever.topk import order_by_score_then_position
from tevatron.files import atomic_output
from tevatron.provenance import file_identity, read_file_record, up_to_date, write_file_record
from tevatron.tensor_files import encodings_provenance

logger = logging.getLogger(__name__)

FLAT = "Flat"
DEFAULT_TRAIN_SIZE = 200_000
# Passages widened to float32 and added to the index at a time (fp16 shards are never widened whole).
ADD_ROWS = 65_536
# --nprobe / --ef_search -> FAISS ParameterSpace names.
KNOBS = {"nprobe": "nprobe", "ef_search": "efSearch"}
_TOO_FEW = re.compile(r"Number of training points \((\d+)\) should be at least as large as number of clusters \((\d+)\)")


@dataclass(frozen=True)
class IndexSettings:
    factory: str
    train_size: int
    train_seed: int
    nprobe: int | None = None
    ef_search: int | None = None

    @property
    def knobs(self) -> dict:
        return {name: value for name, value in (("nprobe", self.nprobe), ("ef_search", self.ef_search))
                if value is not None}


def faiss_error_reason(err: Exception) -> str:
    """The last line of a FAISS C++ error, without the source location: ``could not parse index string X``."""
    text = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    return re.sub(r"^Error in .*? at \S+:\d+: (Error: )?", "", text)


def new_index(factory: str, dim: int):
    """An empty index for ``factory`` (inner product); one line when FAISS cannot make it."""
    import faiss

    try:
        return faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        raise CommandError(f"--index {factory!r} is not an index FAISS can build for {dim}-d vectors "
                           f"({faiss_error_reason(err)})") from None


def apply_knobs(index, settings: IndexSettings) -> None:
    """Set ``--nprobe`` / ``--ef_search`` on ``index``; refuse a knob this index type does not have."""
    import faiss

    space = faiss.ParameterSpace()
    for name, value in settings.knobs.items():
        try:
            space.set_index_parameter(index, KNOBS[name], value)
        except RuntimeError:
            applies_to = "IVF" if name == "nprobe" else "HNSW"
            raise CommandError(f"--{name} applies to {applies_to} indexes only, and --index "
                               f"{settings.factory!r} has none") from None


def check_settings(settings: IndexSettings, dim: int) -> None:
    """Refuse an unknown factory string or a knob that does not apply, before anything is built."""
    if settings.factory == FLAT:
        if settings.knobs:
            raise CommandError(f"--{next(iter(settings.knobs))} applies to IVF/HNSW indexes, not to exact "
                               f"search (--index {FLAT})")
        return
    apply_knobs(new_index(settings.factory, dim), settings)


def factory_slug(factory: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", factory).strip("_")


def default_index_path(shard_paths: Sequence[Path], factory: str) -> Path:
    """Beside the passage encodings: ``corpus.pt.IVF4096_PQ64.faiss`` for one file, ``FIRST-LAST.SLUG.faiss``
    in the first file's folder for several.  Two searches whose shards share that name overwrite each
    other's index, but the provenance record tells them apart, so neither is ever reused wrongly."""
    first, last = shard_paths[0], shard_paths[-1]
    stem = first.name if len(shard_paths) == 1 else f"{first.stem}-{last.stem}"
    return first.parent / f"{stem}.{factory_slug(factory)}.faiss"


def index_provenance(shard_paths: Sequence[Path], settings: IndexSettings, total: int) -> dict:
    """What a built index depends on (search-time knobs are not part of it)."""
    return {"passages": [{"file": file_identity(path), "made_from": encodings_provenance(path)} for path in shard_paths],
            "index": settings.factory, "metric": "inner_product",
            "train_size": min(settings.train_size, total), "train_seed": settings.train_seed}


def training_sample(shards: Sequence[torch.Tensor], size: int, seed: int) -> np.ndarray:
    """``size`` passages (all when fewer) drawn without replacement by ``seed``, in position order, as float32."""
    total = sum(int(shard.shape[0]) for shard in shards)
    if size >= total:
        chosen = np.arange(total)
    else:
        chosen = np.sort(np.random.default_rng(seed).choice(total, size=size, replace=False))
    sample, offset = [], 0
    for shard in shards:
        rows = chosen[(chosen >= offset) & (chosen < offset + shard.shape[0])] - offset
        if rows.size:
            sample.append(shard[torch.from_numpy(rows)].to(torch.float32).numpy())
        offset += int(shard.shape[0])
    return np.ascontiguousarray(np.concatenate(sample))


def build_index(shards: Sequence[torch.Tensor], settings: IndexSettings):
    """Train on the sample, then add every passage (float32, block by block) in position order."""
    dim, total = int(shards[0].shape[1]), sum(int(shard.shape[0]) for shard in shards)
    index = new_index(settings.factory, dim)
    for part in index_parts(index):
        # Polysemous training only reorders PQ codes for Hamming pre-filtering, which this search does not
        # use (scores are unchanged); on small samples it took minutes
        if hasattr(part, "do_polysemous_training"):
            part.do_polysemous_training = False
    if not index.is_trained:
        sample = training_sample(shards, settings.train_size, settings.train_seed)
        try:
            index.train(sample)
        except RuntimeError as err:
            too_few = _TOO_FEW.search(str(err))
            if too_few is None:
                raise CommandError(f"--index {settings.factory!r}: training failed ({faiss_error_reason(err)})") from None
            raise CommandError(f"--index {settings.factory!r} needs at least {too_few.group(2)} training vectors, "
                               f"but the sample has {len(sample)} ({total} passages, --index_train_size "
                               f"{settings.train_size}); use a smaller index (fewer IVF lists) or more "
                               f"passages") from None
    for shard in shards:
        for start in range(0, shard.shape[0], ADD_ROWS):
            index.add(np.ascontiguousarray(shard[start:start + ADD_ROWS].to(torch.float32).numpy()))
    return index


def load_or_build_index(shard_paths: Sequence[Path], shards: Sequence[torch.Tensor], settings: IndexSettings,
                        index_path: Path) -> tuple[object, bool]:
    """``(index with the knobs applied, built)``: the saved index when its record is the wanted one, else
    a new one, saved with its record."""
    import faiss

    total = sum(int(shard.shape[0]) for shard in shards)
    wanted = index_provenance(shard_paths, settings, total)
    reuse = up_to_date(index_path, wanted, read_file_record, redo="rebuilding the index")
    if reuse:
        index = faiss.read_index(str(index_path))
        built = False
    else:
        logger.info("building index %r on %d passages (training sample %d, seed %d)", settings.factory, total,
                    wanted["train_size"], settings.train_seed)
        index = build_index(shards, settings)
        with atomic_output(index_path) as tmp:
            faiss.write_index(index, str(tmp))
        write_file_record(index_path, wanted)
        logger.info("wrote index %s (%d bytes)", index_path, index_path.stat().st_size)
        built = True
    if index.ntotal != total:  # a record matching an index of another collection would be a bug; never search it
        raise CommandError(f"{index_path}: holds {index.ntotal} vectors, not the {total} passages it was recorded for")
    apply_knobs(index, settings)
    return index, built


def effective_knobs(index) -> dict:
    """The search-time values in force (FAISS defaults included), for the search provenance."""
    import faiss

    values = {}
    for part in index_parts(index):
        if isinstance(part, faiss.IndexIVF):
            values.setdefault("nprobe", int(part.nprobe))
        if isinstance(part, faiss.IndexHNSW):
            values.setdefault("ef_search", int(part.hnsw.efSearch))
    return values


def index_parts(index) -> list:
    """``index`` and the indexes inside it (a pre-transform's index, an IVF's quantizer, HNSW storage), downcast."""
    import faiss

    parts, pending = [], [index]
    while pending:
        part = faiss.downcast_index(pending.pop())
        parts.append(part)
        if isinstance(part, faiss.IndexPreTransform):
            pending.append(part.index)
        elif isinstance(part, faiss.IndexIVF):
            pending.append(part.quantizer)
        elif isinstance(part, faiss.IndexHNSW):
            pending.append(part.storage)
    return parts


class FaissIndexSearcher:
    """Search a built index; rows ordered by the ranking rule, missing hits (FAISS's -1) as ``-inf, -1`` last."""

    def __init__(self, index):
        self.index = index

    def search(self, queries: torch.Tensor, depth: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = min(depth, int(self.index.ntotal))
        scores, positions = self.index.search(np.ascontiguousarray(queries.to(torch.float32).numpy()), k)
        scores, positions = torch.from_numpy(scores), torch.from_numpy(positions)
        scores = torch.where(positions < 0, torch.full_like(scores, float("-inf")), scores)
        return order_by_score_then_position(scores, positions)
