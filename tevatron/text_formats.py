"""Text formats the toolkit reads and writes: qrels, queries, collections, negatives, runs and rankings,
JSON lines.  Ids are strings everywhere.  Reading a text file never imports torch.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tevatron.files import InputError, atomic_text_writer

# --------------------------------------------------------------------------- text readers
def iter_lines(path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` without the newline; non-UTF-8 bytes become an InputError."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                raise InputError(path, f"not valid UTF-8 ({err.reason} at byte {err.start})", number) from None
            yield number, line.rstrip("\r\n")


def iter_jsonl(path) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSON-lines file."""
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        record = _parse_json_line(path, number, line)
        if not isinstance(record, dict):
            raise InputError(path, f"expected a JSON object, got {type(record).__name__}", number)
        yield number, record


def _parse_json_line(path, number: int, line: str):
    """``json.loads`` with every failure as an InputError (it also raises plain ValueError for integers
    over 4300 digits and RecursionError for deep nesting)."""
    try:
        return json.loads(line)
    except json.JSONDecodeError as err:
        raise InputError(path, f"malformed JSON ({err.msg} at column {err.colno})", number) from None
    except (ValueError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err).split(";")[0]
        raise InputError(path, f"malformed JSON ({reason})", number) from None


def iter_tsv(path, columns: int | Sequence[int] | None = None, skip_header: Sequence[str] | None = None
             ) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` of a tab-separated file, checking the column count.

    ``columns`` is the allowed number of columns (one int or several); ``skip_header`` names the first
    field of a header line to skip when present.
    """
    allowed = (columns,) if isinstance(columns, int) else tuple(columns or ())
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t")
        if number == 1 and skip_header is not None and fields[0].strip().lower() in skip_header:
            continue
        if allowed and len(fields) not in allowed:
            want = " or ".join(str(n) for n in allowed)
            raise InputError(path, f"expected {want} tab-separated columns, found {len(fields)}", number)
        yield number, fields


def read_jsonl(path) -> list[dict]:
    return [record for _, record in iter_jsonl(path)]


def _require_id(path, number, value, what) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise InputError(path, f"missing {what}", number)
    if not isinstance(value, (str, int)):
        raise InputError(path, f"{what} must be a string or integer, got {type(value).__name__}", number)
    return str(value).strip()


# --------------------------------------------------------------------------- qrels
QRELS_HEADERS = ("query-id", "qid", "query_id", "query")


def read_qrels(path) -> dict[str, dict[str, int]]:
    """Read relevance judgements: TREC/MS MARCO (``qid 0 pid rel``, tabs or spaces) or BEIR
    (``query-id\\tcorpus-id\\tscore`` with a header)."""
    qrels: dict[str, dict[str, int]] = {}
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if number == 1 and fields[0].strip().lower() in QRELS_HEADERS and not _is_number(fields[-1]):
            continue  # a header (a query called "qid" with a numeric relevance is data)
        if len(fields) == 4:
            qid, pid, rel = fields[0], fields[2], fields[3]
        elif len(fields) == 3:
            qid, pid, rel = fields
        else:
            raise InputError(path, f"qrels line must have 3 (BEIR) or 4 (TREC) columns, found {len(fields)}", number)
        try:
            relevance = int(float(rel))
        except (ValueError, OverflowError):  # OverflowError: "inf"
            raise InputError(path, f"relevance {rel.strip()!r} is not a number", number) from None
        qid, pid = qid.strip(), pid.strip()
        if not qid or not pid:
            raise InputError(path, "empty query or passage id", number)
        qrels.setdefault(qid, {})[pid] = relevance
    if not qrels:
        raise InputError(path, "no relevance judgements found")
    return qrels


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def positives_from_qrels(qrels: dict[str, dict[str, int]]) -> dict[str, list[str]]:
    """Relevant (relevance > 0) passage ids per query, in file order."""
    return {qid: [pid for pid, rel in judged.items() if rel > 0] for qid, judged in qrels.items()}


def write_qrels(path, qrels: dict[str, dict[str, int]]) -> None:
    """Write TREC-style qrels (``qid 0 pid rel``, tab-separated, as MS MARCO ships them)."""
    with atomic_text_writer(path) as out:
        for qid, judged in qrels.items():
            for pid, rel in judged.items():
                out.write(f"{qid}\t0\t{pid}\t{rel}\n")


# --------------------------------------------------------------------------- queries and collections
def read_queries(path) -> dict[str, str]:
    """Read queries from ``qid\\ttext`` TSV or BEIR-style JSON lines (``_id``, ``text``)."""
    path = Path(path)
    queries: dict[str, str] = {}
    if path.suffix in (".jsonl", ".json"):
        records = ((n, _require_id(path, n, r.get("_id", r.get("query_id")), "query id"), r.get("text"))
                   for n, r in iter_jsonl(path))
    else:
        records = ((n, _require_id(path, n, f[0], "query id"), f[1]) for n, f in iter_tsv(path, 2))
    for number, qid, text in records:
        if not isinstance(text, str) or not text.strip():
            raise InputError(path, f"query {qid} has empty text", number)
        if qid in queries:
            raise InputError(path, f"duplicate query id {qid}", number)
        queries[qid] = text.strip()
    return queries


def read_collection(path) -> dict[str, tuple[str, str]]:
    collection = {pid: (title, text) for _, pid, title, text in iter_collection(path)}
    if not collection:
        raise InputError(path, "empty corpus")
    return collection


def write_tsv(path, rows: Iterable[Sequence]) -> None:
    with atomic_text_writer(path) as out:
        for row in rows:
            out.write("\t".join(str(value) for value in row) + "\n")


def write_jsonl(path, records: Iterable[dict]) -> None:
    with atomic_text_writer(path) as out:
        for record in records:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")


# --------------------------------------------------------------------------- negatives (qid \t pid,pid,...)
def read_negatives(path) -> dict[str, list[str]]:
    return {qid: pids for _, qid, pids in iter_negatives(path)}


def write_negatives(path, groups) -> None:
    """Write ``qid\tpid,pid,...`` lines from a ``{qid: pids}`` mapping or an iterable of ``(qid, pids)``
    pairs (streamed: pairs are written as they arrive)."""
    pairs = groups.items() if hasattr(groups, "items") else groups
    write_tsv(path, ((qid, ",".join(pids)) for qid, pids in pairs))



def write_ranking(path, ranking: Iterable[tuple[str, Sequence[tuple[str, float]]]]) -> None:
    """Write ``qid\\tpid\\tscore`` lines, grouped by query, in the order given (best first).

    Float scores get 9 significant digits, enough to round-trip float32, so no ties appear in the text
    that the vectors did not have."""
    with atomic_text_writer(path) as out:
        for qid, hits in ranking:
            for pid, score in hits:
                out.write(f"{qid}\t{pid}\t{score:.9g}\n" if isinstance(score, float) else f"{qid}\t{pid}\t{score}\n")


def read_run(path, kind: str = "auto") -> dict[str, dict[str, float]]:
    """Read a run into ``{qid: {pid: score}}`` (higher is better).

    ``kind``: ``score`` (``qid pid score``, Tevatron ranking), ``rank`` (``qid pid rank``, MS MARCO; score
    is ``-rank``), ``trec`` (``qid Q0 pid rank score tag``) or ``auto`` (6 columns is TREC; 3 columns is
    MS MARCO when the file name ends in ``.marco``, else a score ranking).
    """
    path = Path(path)
    if kind == "auto":
        kind = "rank" if path.suffix == ".marco" else None
    run: dict[str, dict[str, float]] = {}
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        detected = kind or ("trec" if len(fields) == 6 else "score")
        expected = 6 if detected == "trec" else 3
        if len(fields) != expected:
            raise InputError(path, f"run line must have {expected} columns, found {len(fields)}", number)
        if detected == "trec":
            qid, pid, value = fields[0], fields[2], fields[4]
        else:
            qid, pid, value = fields
        try:
            score = float(value)
        except ValueError:
            what = "rank" if detected == "rank" else "score"
            raise InputError(path, f"{what} {value.strip()!r} is not a number", number) from None
        if detected == "rank":
            score = -score
        qid, pid = qid.strip(), pid.strip()
        hits = run.setdefault(qid, {})
        if pid in hits:
            raise InputError(path, f"passage {pid} listed twice for query {qid}", number)
        hits[pid] = score
    return run


def iter_ranking_groups(path) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """Yield ``(qid, [(pid, score_text), ...])`` for each consecutive block of a ``qid pid score`` file."""
    current, hits = None, []
    for number, fields in iter_tsv(path, 3):
        qid, pid, score = (f.strip() for f in fields)
        if not _is_number(score):
            raise InputError(path, f"score {score!r} is not a number", number)
        if qid != current and current is not None:
            yield current, hits
            hits = []
        current = qid
        hits.append((pid, score))
    if current is not None:
        yield current, hits


# --------------------------------------------------------------------------- streaming helpers (preprocessing)
def iter_negatives(path) -> Iterator[tuple[int, str, list[str]]]:
    """Yield ``(line_number, qid, [pid, ...])`` one line at a time.

    MS MARCO's negatives file holds ~500k lines of 200 ids; :func:`read_negatives` would keep all of them
    as Python strings (several GB), so builders that sample per query stream instead.
    """
    first_line: dict[str, int] = {}  # a repeated query would silently give two training groups
    for number, (qid, pids) in iter_tsv(path, 2):
        qid = qid.strip()
        if not qid:
            raise InputError(path, "empty query id", number)
        if qid in first_line:
            raise InputError(path, f"query id {qid!r} repeated (first on line {first_line[qid]})", number)
        first_line[qid] = number
        yield number, qid, [p for p in (x.strip() for x in pids.split(",")) if p]


def count_data_lines(path) -> int:
    """Number of non-blank lines: the rows :func:`iter_collection` yields.

    Counted on raw bytes, so a corpus can be split into row ranges before anything is parsed.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    with open(path, "rb") as handle:
        return sum(1 for raw in handle if raw.strip())


def iter_collection(path, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, str, str, str]]:
    """Yield ``(line_number, pid, title, text)`` for rows ``[start, stop)`` (0-based, blank lines not
    counted; the whole file by default) of a ``pid\ttitle\ttext`` / ``pid\ttext`` TSV or BEIR JSON
    lines (``_id`` or ``docid``, ``title``, ``text``) collection, in constant memory.

    Rows before ``start`` are skipped as raw bytes, so parallel workers can each read their own slice
    of an 8.8M-passage corpus cheaply.  Duplicate ids are detected within the rows read (the whole
    file by default, as when the corpus is normalised).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    jsonl = path.suffix in (".jsonl", ".json")
    seen: set[str] = set()
    row = -1
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                continue
            row += 1
            if row < start:
                continue
            if stop is not None and row >= stop:
                break
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as err:
                raise InputError(path, f"not valid UTF-8 ({err.reason} at byte {err.start})", number) from None
            pid, title, text = _parse_collection_line(path, number, line, jsonl)
            if pid in seen:
                raise InputError(path, f"duplicate passage id {pid}", number)
            seen.add(pid)
            yield number, pid, title, text


def _parse_collection_line(path, number: int, line: str, jsonl: bool) -> tuple[str, str, str]:
    """One collection row as ``(pid, title, text)``, with :func:`iter_collection`'s checks."""
    if jsonl:
        record = _parse_json_line(path, number, line)
        if not isinstance(record, dict):
            raise InputError(path, f"expected a JSON object, got {type(record).__name__}", number)
        pid, title, text = record.get("_id", record.get("docid")), record.get("title") or "", record.get("text")
    else:
        fields = line.split("\t")
        if len(fields) not in (2, 3):
            raise InputError(path, f"expected 2 or 3 tab-separated columns, found {len(fields)}", number)
        pid, title, text = fields[0], (fields[1] if len(fields) == 3 else ""), fields[-1]
    pid = _require_id(path, number, pid, "passage id")
    if not isinstance(text, str) or not isinstance(title, str):
        raise InputError(path, f"passage {pid} has no text", number)
    return pid, title.strip(), text.strip()


# --------------------------------------------------------------------------- run files for official tools
def write_marco_run(path, ranking: Iterable[tuple[str, Sequence[tuple[str, object]]]]) -> None:
    """Write an MS MARCO run, ``qid\\tpid\\trank`` (rank from 1), from ``(qid, hits)`` groups best first."""
    with atomic_text_writer(path) as out:
        for qid, hits in ranking:
            for rank, (pid, _score) in enumerate(hits, start=1):
                out.write(f"{qid}\t{pid}\t{rank}\n")


def write_trec_run(path, ranking: Iterable[tuple[str, Sequence[tuple[str, object]]]], tag: str = "tevatron") -> None:
    """Write a TREC run, ``qid Q0 pid rank score tag`` (space-separated), from ``(qid, hits)`` groups best first.

    Scores are written as given (strings pass through unchanged, so no precision is lost)."""
    if not tag or any(ch.isspace() for ch in tag):
        raise ValueError(f"TREC run tag must be one non-empty word, got {tag!r}")
    with atomic_text_writer(path) as out:
        for qid, hits in ranking:
            for rank, (pid, score) in enumerate(hits, start=1):
                out.write(f"{qid} Q0 {pid} {rank} {score} {tag}\n")
