"""Normalise a data source into the MS MARCO folder layout that every later step reads.

Sources: a folder in MS MARCO / RocketQA layout (``para.txt`` + ``para.title.txt`` or ``corpus.tsv``,
query and qrels files), a folder in BEIR layout (``corpus.jsonl``, ``queries.jsonl``, ``qrels/*.tsv``),
or a BEIR dataset name, downloaded from the BEIR mirror.  Output (in ``out``)::

    corpus.tsv        pid \\t title \\t text
    train.query.txt   qid \\t text        dev.query.txt    (BEIR: the test split's queries)
    qrels.train.tsv   qid \\t 0 \\t pid \\t rel              qrels.dev.tsv

Every file is written atomically with a record of the source files it was made from
(:mod:`tevatron.provenance`), so the step can be rerun: a file is rewritten only when its sources
changed (or with ``--overwrite``).
"""
from __future__ import annotations

import argparse
import logging
import re
import shutil
import socket
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Iterator, Sequence

from tqdm import tqdm

from tevatron.argument_checks import at_least, float_arg
from tevatron.cli import CommandError, command
from tevatron.files import InputError, atomic_output, check_output_dir
from tevatron.text_formats import iter_collection, iter_tsv, read_qrels, read_queries, write_qrels, write_tsv
from tevatron.preprocess.common import check_id, real_title, tsv_safe
from tevatron.provenance import file_identity, read_file_record, up_to_date, write_file_record

logger = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"
CORPUS_FILE = "corpus.tsv"
TRAIN_QUERIES_FILE = "train.query.txt"
DEV_QUERIES_FILE = "dev.query.txt"
TRAIN_QRELS_FILE = "qrels.train.tsv"
DEV_QRELS_FILE = "qrels.dev.tsv"
OUTPUT_FILES = (CORPUS_FILE, TRAIN_QUERIES_FILE, DEV_QUERIES_FILE, TRAIN_QRELS_FILE, DEV_QRELS_FILE)

# MS MARCO / RocketQA file names, in order of preference.
MARCO_PASSAGE_FILES = ("para.txt", "collection.tsv")
MARCO_TITLE_FILES = ("para.title.txt",)
MARCO_TRAIN_QUERY_FILES = ("train.query.txt", "queries.train.tsv")
MARCO_DEV_QUERY_FILES = ("dev.query.txt", "queries.dev.small.tsv", "queries.dev.tsv")
MARCO_TRAIN_QRELS_FILES = ("qrels.train.tsv",)
MARCO_DEV_QRELS_FILES = ("qrels.dev.tsv", "qrels.dev.small.tsv")
BEIR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# --------------------------------------------------------------------------- source detection
def detect_source(source: str) -> str:
    """``marco``, ``beir`` (a local folder) or ``beir-name`` (to download); anything else is an error."""
    path = Path(source)
    if path.is_dir():
        if (path / "corpus.jsonl").is_file():
            return "beir"
        if (path / CORPUS_FILE).is_file() or _first_existing(path, MARCO_PASSAGE_FILES) is not None:
            return "marco"
        raise CommandError(f"{path}: neither a BEIR folder (corpus.jsonl) nor an MS MARCO folder "
                              f"(corpus.tsv, para.txt or collection.tsv)")
    if path.exists():
        raise CommandError(f"{path}: expected a folder or a BEIR dataset name")
    if BEIR_NAME.match(source) and "/" not in source:
        return "beir-name"
    raise CommandError(f"{source}: no such folder")


def _first_existing(folder: Path, names: Sequence[str]) -> Path | None:
    """The first of ``names`` present in ``folder``: the layouts name the same file differently."""
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None


# --------------------------------------------------------------------------- writing helpers
def sources_record(*sources: Path | None) -> dict:
    """The provenance record of a normalised file: the identities of the source files it is made from."""
    return {"sources": [file_identity(source) if source is not None else None for source in sources]}


def _is_own_source(path: Path, sources: dict) -> bool:
    """A source folder that is also the output folder holds files that are their own source."""
    return any(source is not None and source["path"] == str(path.resolve()) for source in sources["sources"])


def _write_unless_current(path: Path, write: Callable[[Path], None], sources: dict, overwrite: bool) -> bool:
    """Run ``write(path)`` unless ``path`` was already written from the very same ``sources``."""
    if _is_own_source(path, sources):
        logger.info("%s is its own source; kept", path)
        return False
    if up_to_date(path, sources, read_file_record, overwrite, redo="rewriting"):
        return False
    write(path)
    write_file_record(path, sources)
    logger.info("wrote %s", path)
    return True


def _write_corpus(path: Path, passages: Iterator[tuple[int, str, str, str]], source: Path) -> None:
    """Write ``pid \\t title \\t text`` rows, cleaning fields so each row stays one TSV line."""
    def rows():
        count = 0
        for number, pid, title, text in tqdm(passages, desc=f"corpus {source.name}", unit=" passages",
                                             mininterval=5):
            count += 1
            yield check_id(source, number, pid, "passage id"), tsv_safe(real_title(title)), tsv_safe(text)
        if not count:  # raised inside the atomic write, so no empty corpus.tsv is left to skip on a rerun
            raise InputError(source, "empty corpus")
    write_tsv(path, rows())


def _write_queries(path: Path, queries: dict[str, str], source: Path) -> None:
    write_tsv(path, ((check_id(source, None, qid, "query id"), tsv_safe(text)) for qid, text in queries.items()))


# --------------------------------------------------------------------------- MS MARCO / RocketQA layout
def _iter_titles(path: Path) -> Iterator[tuple[str, str]]:
    """``(pid, title)`` from ``pid \\t title`` lines; a line with the id alone means no title."""
    for _, fields in iter_tsv(path, (1, 2)):
        yield fields[0].strip(), real_title(fields[1] if len(fields) == 2 else "")


def iter_titled_passages(text_path: Path, title_path: Path | None) -> Iterator[tuple[int, str, str, str]]:
    """``(line_number, pid, title, text)``: passages of ``text_path`` joined with their titles.

    RocketQA ships both files in the same pid order, so they are walked in lockstep (no 8.8M-entry
    title dictionary); only if the orders disagree are the titles loaded into memory.
    """
    passages = iter_collection(text_path)
    if title_path is None:
        yield from passages
        return
    titles = _iter_titles(title_path)
    title_lookup: dict[str, str] | None = None
    for number, pid, title, text in passages:
        if title_lookup is None:
            next_title = next(titles, None)
            if next_title is not None and next_title[0] == pid:
                yield number, pid, next_title[1] or title, text
                continue
            logger.info("%s is not in the order of %s; loading titles into memory", title_path, text_path)
            title_lookup = dict(_iter_titles(title_path))
        yield number, pid, title_lookup.get(pid, "") or title, text


def _marco_passage_file(source: Path) -> Path:
    """The passage file of an MS MARCO folder: an existing ``corpus.tsv`` wins over ``para.txt``."""
    text_path = _first_existing(source, (CORPUS_FILE,) + MARCO_PASSAGE_FILES)
    if text_path is None:
        raise CommandError(f"{source}: no corpus.tsv, para.txt or collection.tsv")
    return text_path


def _marco_passages(text_path: Path) -> Iterator[tuple[int, str, str, str]]:
    """Passages of ``text_path``, joined with ``para.title.txt`` unless it is a titled corpus.tsv."""
    if text_path.name == CORPUS_FILE:
        return iter_collection(text_path)
    return iter_titled_passages(text_path, _first_existing(text_path.parent, MARCO_TITLE_FILES))


def prepare_marco(source: Path, out: Path, overwrite: bool = False) -> list[Path]:
    """Normalise an MS MARCO / RocketQA folder; returns the files that make up the output."""
    outputs = [out / CORPUS_FILE]
    text_path = _marco_passage_file(source)
    title_path = None if text_path.name == CORPUS_FILE else _first_existing(text_path.parent, MARCO_TITLE_FILES)
    _write_unless_current(out / CORPUS_FILE, lambda p: _write_corpus(p, _marco_passages(text_path), text_path),
                          sources_record(text_path, title_path), overwrite)
    pairs = ((MARCO_TRAIN_QUERY_FILES, TRAIN_QUERIES_FILE, MARCO_TRAIN_QRELS_FILES, TRAIN_QRELS_FILE),
             (MARCO_DEV_QUERY_FILES, DEV_QUERIES_FILE, MARCO_DEV_QRELS_FILES, DEV_QRELS_FILE))
    for query_names, query_out, qrels_names, qrels_out in pairs:
        query_path = _first_existing(source, query_names)
        qrels_path = _first_existing(source, qrels_names)
        if query_path is None or qrels_path is None:
            logger.warning("%s: no %s / %s pair; %s and %s not written", source, query_names[0], qrels_names[0],
                           query_out, qrels_out)
            continue
        _write_unless_current(out / query_out, lambda p, q=query_path: _write_queries(p, read_queries(q), q),
                              sources_record(query_path), overwrite)
        _write_unless_current(out / qrels_out, lambda p, q=qrels_path: write_qrels(p, read_qrels(q)),
                              sources_record(qrels_path), overwrite)
        outputs += [out / query_out, out / qrels_out]
    if len(outputs) == 1:
        raise CommandError(f"{source}: found a corpus but no queries with qrels")
    return outputs


# --------------------------------------------------------------------------- BEIR layout
def _split_queries(queries: dict[str, str], qrels: dict[str, dict[str, int]], split_path: Path
                   ) -> dict[str, str]:
    """The queries judged in one BEIR split, in queries.jsonl order; judged ids without text are counted."""
    missing = [qid for qid in qrels if qid not in queries]
    if missing:
        logger.warning("%s: %d judged queries are not in queries.jsonl (e.g. %s); skipped", split_path,
                       len(missing), missing[0])
    return {qid: text for qid, text in queries.items() if qid in qrels}


def prepare_beir(source: Path, out: Path, overwrite: bool = False) -> list[Path]:
    """Normalise a BEIR folder: train split -> train files, test split -> dev files."""
    for required in ("corpus.jsonl", "queries.jsonl"):
        if not (source / required).is_file():
            raise CommandError(f"{source}: BEIR folder without {required}")
    outputs = [out / CORPUS_FILE]
    corpus_path = source / "corpus.jsonl"
    _write_unless_current(out / CORPUS_FILE, lambda p: _write_corpus(p, iter_collection(corpus_path), corpus_path),
                          sources_record(corpus_path), overwrite)
    queries: dict[str, str] | None = None
    for split, query_out, qrels_out in (("train", TRAIN_QUERIES_FILE, TRAIN_QRELS_FILE),
                                        ("test", DEV_QUERIES_FILE, DEV_QRELS_FILE)):
        split_path = source / "qrels" / f"{split}.tsv"
        if not split_path.is_file():
            logger.warning("%s: no qrels/%s.tsv; %s and %s not written", source, split, query_out, qrels_out)
            continue
        outputs += [out / query_out, out / qrels_out]
        query_sources = sources_record(source / "queries.jsonl", split_path)
        qrels_sources = sources_record(split_path)

        def write_split_queries(path: Path, split_path=split_path) -> None:
            nonlocal queries
            if queries is None:
                queries = read_queries(source / "queries.jsonl")
            _write_queries(path, _split_queries(queries, read_qrels(split_path), split_path),
                           source / "queries.jsonl")

        _write_unless_current(out / query_out, write_split_queries, query_sources, overwrite)
        _write_unless_current(out / qrels_out, lambda p, q=split_path: write_qrels(p, read_qrels(q)), qrels_sources,
                              overwrite)
    if len(outputs) == 1:
        raise CommandError(f"{source}: BEIR folder without qrels/train.tsv or qrels/test.tsv")
    return outputs


# --------------------------------------------------------------------------- BEIR download
def _offline_hint(name: str) -> str:
    return (f"download it elsewhere and pass --source /path/to/{name} (a folder with corpus.jsonl, "
            f"queries.jsonl and qrels/), or DATA=/path/to/{name} for get_data.sh")


def download_file(url: str, target: Path, timeout: float, hint: str) -> None:
    """Fetch ``url`` into ``target`` atomically; a dead network fails within ``timeout`` seconds."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, atomic_output(target) as tmp:
            total = int(response.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as handle, tqdm(total=total, unit="B", unit_scale=True,
                                                 desc=f"download {target.name}") as progress:
                for block in iter(lambda: response.read(1 << 20), b""):
                    handle.write(block)
                    progress.update(len(block))
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as err:
        reason = getattr(err, "reason", None) or err
        raise CommandError(f"cannot download {url} ({reason}); {hint}") from None


def extract_beir_zip(zip_path: Path, target: Path) -> Path:
    """Unpack a BEIR zip (``name/corpus.jsonl`` ...) into ``target``, atomically via a sibling temp dir."""
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
        try:
            with zipfile.ZipFile(zip_path) as archive:
                archive.extractall(tmp)
        except zipfile.BadZipFile as err:
            raise InputError(zip_path, f"not a zip file ({err}); delete it and retry") from None
        corpora = sorted(Path(tmp).rglob("corpus.jsonl"), key=lambda p: len(p.parts))
        if not corpora:
            raise InputError(zip_path, "zip holds no corpus.jsonl")
        shutil.move(str(corpora[0].parent), str(target))
    return target


def download_beir(name: str, download_dir: Path, timeout: float = 10.0) -> Path:
    """The local folder of BEIR dataset ``name``, downloading and unpacking it the first time."""
    target = download_dir / name
    if (target / "corpus.jsonl").is_file():
        return target
    zip_path = download_dir / f"{name}.zip"
    if not zip_path.is_file():
        download_file(BEIR_URL.format(name=name), zip_path, timeout, _offline_hint(name))
    return extract_beir_zip(zip_path, target)


# --------------------------------------------------------------------------- entry point
def prepare(source: str, out, overwrite: bool = False, download_dir=None, timeout: float = 10.0) -> list[Path]:
    """Normalise ``source`` into ``out``; returns the output files."""
    out = Path(out)
    kind = detect_source(source)
    logger.info("source %s: %s layout", source, {"marco": "MS MARCO", "beir": "BEIR", "beir-name": "BEIR"}[kind])
    if kind == "beir-name":
        folder = download_beir(source, Path(download_dir) if download_dir else out / "download", timeout)
        return prepare_beir(folder, out, overwrite)
    if kind == "beir":
        return prepare_beir(Path(source), out, overwrite)
    return prepare_marco(Path(source), out, overwrite)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True,
                        help="folder in MS MARCO/RocketQA or BEIR layout, or a BEIR dataset name (e.g. scifact)")
    parser.add_argument("--out", default="marco", help="output folder (default: marco)")
    parser.add_argument("--download_dir", default=None, help="where BEIR zips go (default: OUT/download)")
    parser.add_argument("--timeout", type=float_arg(at_least(0.001, 86400)), default=10.0,
                        help="network timeout in seconds (default: 10)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite outputs that already exist")
    return parser


def _main(argv: Sequence[str] | None) -> None:
    args = build_parser().parse_args(argv)
    for folder in (args.out, args.download_dir):
        if folder is not None:
            check_output_dir(folder)
    prepare(args.source, args.out, overwrite=args.overwrite, download_dir=args.download_dir, timeout=args.timeout)


def main(argv: Sequence[str] | None = None) -> int:
    return command(_main)(argv)
