"""Text formats the toolkit reads and writes: qrels, queries, collections, negatives, runs and rankings,
JSON lines.  Ids are strings everywhere.  Reading a text file never imports torch.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tevatron.files import InputError, atomic_text_writer

# --------------------------------------------------------------------------- text readers
UTF8_BOM = b"\xef\xbb\xbf"


def iter_raw_lines(path) -> Iterator[tuple[int, bytes]]:
    """Yield ``(line_number, raw bytes)`` of a text file, with a UTF-8 byte-order mark at its start removed.

    The one place every text reader opens a file: editors on Windows save a BOM, which would otherwise
    become part of the first id (``\ufeffq1`` is not ``q1``) and silently drop that query or passage.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "no such file")
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            yield number, (raw[len(UTF8_BOM):] if number == 1 and raw.startswith(UTF8_BOM) else raw)


def decode_line(path, number: int, raw: bytes) -> str:
    """One raw line as text without its line ending (LF or CRLF); non-UTF-8 bytes become an InputError."""
    try:
        return raw.decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as err:
        raise InputError(path, f"not valid UTF-8 ({err.reason} at byte {err.start})", number) from None


def iter_lines(path) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, line)`` without the newline (and without a leading byte-order mark)."""
    for number, raw in iter_raw_lines(path):
        yield number, decode_line(path, number, raw)


def parse_finite(path, number: int, text: str, what: str) -> float:
    """``float(text)``, with a non-number or NaN/infinity (``nan``, ``inf``, ``1e999``) as an InputError:
    a NaN score sorts anywhere and would silently reorder a ranking."""
    try:
        value = float(text)
    except ValueError:
        raise InputError(path, f"{what} {text.strip()!r} is not a number", number) from None
    if not math.isfinite(value):
        raise InputError(path, f"{what} {text.strip()!r} is not a finite number", number)
    return value


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
        relevance = parse_finite(path, number, rel, "relevance")
        if not relevance.is_integer():  # int() would silently turn 0.5 into "not relevant"
            raise InputError(path, f"relevance {rel.strip()!r} is not an integer", number)
        relevance = int(relevance)
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
            qid = checked_id(path, qid, "query id")
            for pid, rel in judged.items():
                out.write(f"{qid}\t0\t{checked_id(path, pid, 'passage id')}\t{rel}\n")


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
    write_tsv(path, ((checked_id(path, qid, "query id"), ",".join(_list_id(path, pid) for pid in pids))
                     for qid, pids in pairs))


def _list_id(path, pid) -> str:
    pid = checked_id(path, pid, "passage id")
    if "," in pid:
        raise InputError(path, f"cannot write passage id {pid!r}: it contains a comma, which separates the list")
    return pid



# --------------------------------------------------------------------------- runs and rankings
RUN_FORMATS = ("auto", "score", "rank", "trec")
_INTEGER = re.compile(r"[+-]?[0-9]+")


def checked_id(path, value, what: str, whitespace: bool = True) -> str:
    """``value`` as it may be written into a line-oriented run file, or an InputError naming ``path``.

    A file is never written that its reader would read differently: tabs and line breaks split
    fields and lines, readers strip edge whitespace and a leading byte-order mark, and TREC runs
    (``whitespace=False``) split on any whitespace."""
    text = str(value)
    if not text or any(ch in text for ch in "\t\r\n"):
        problem = "is empty" if not text else "contains a tab or line break"
    elif text != text.strip() or text.startswith("\ufeff"):
        problem = "starts or ends with whitespace or a byte-order mark"
    elif not whitespace and any(ch.isspace() for ch in text):
        problem = "contains whitespace, which separates the columns of a TREC run"
    else:
        return text
    raise InputError(path, f"cannot write {what} {text!r}: it {problem}, so the file could not be read back")


def score_text(path, score) -> str:
    """A score as written in a ranking: 9 significant digits for floats (enough to round-trip float32,
    so no ties appear in the text that the vectors did not have), and always with a decimal point or
    exponent, so the file is never mistaken for MS MARCO ranks (see :func:`read_run`)."""
    if not math.isfinite(float(score)):
        raise InputError(path, f"cannot write score {score!r}: not a finite number")
    text = f"{score:.9g}" if isinstance(score, float) else str(score)
    return text + ".0" if _INTEGER.fullmatch(text) else text


def write_ranking(path, ranking: Iterable[tuple[str, Sequence[tuple[str, float]]]]) -> None:
    """Write ``qid\\tpid\\tscore`` lines, grouped by query, in the order given (best first)."""
    with atomic_text_writer(path) as out:
        for qid, hits in ranking:
            qid = checked_id(path, qid, "query id")
            for pid, score in hits:
                out.write(f"{qid}\t{checked_id(path, pid, 'passage id')}\t{score_text(path, score)}\n")


class _RankPattern:
    """Tracks whether a third column could be MS MARCO ranks: integers running 1, 2, 3, ... for each
    query in file order.  ``first_break`` is ``(line, message)`` for the first value that does not."""

    def __init__(self):
        self.integers = True
        self.first_break: tuple[int, str] | None = None
        self._count: dict[str, int] = {}

    def add(self, number: int, qid: str, text: str) -> None:
        if not self.integers:
            return
        if not _INTEGER.fullmatch(text):
            self.integers, self._count = False, {}
            return
        position = self._count.get(qid, 0) + 1
        self._count[qid] = position
        if self.first_break is None and text.lstrip("+").lstrip("0") != str(position):
            self.first_break = (number, f"query {qid}'s value number {position} is {text}")

    @property
    def ranks(self) -> bool:
        return self.integers and self.first_break is None


def _three_column_kind(path, pattern: _RankPattern) -> str:
    """The documented rule for a 3-column run read with ``auto`` (see :func:`read_run`)."""
    if not pattern.integers:
        return "score"
    if pattern.ranks:
        return "rank"
    number, detail = pattern.first_break
    raise InputError(path, f"ambiguous run: the third column holds only integers, but not ranks 1, 2, 3... per "
                           f"query ({detail}); pass --run_format rank or --run_format score", number)


def read_run(path, kind: str = "auto") -> dict[str, dict[str, float]]:
    """Read a run into ``{qid: {pid: score}}`` (higher is better; for MS MARCO ranks the score is
    ``-rank``).  See :func:`read_run_with_format` for the formats."""
    return read_run_with_format(path, kind)[0]


def read_run_with_format(path, kind: str = "auto") -> tuple[dict[str, dict[str, float]], str]:
    """Read a run; return it and its format (``score``, ``rank`` or ``trec``).

    ``kind``: ``score`` (``qid pid score``, a Tevatron ranking), ``rank`` (``qid pid rank``, an MS MARCO
    run: positive integer ranks, each at most once per query; the score is ``-rank``), ``trec``
    (``qid Q0 pid rank score tag``, ranked by score) or ``auto``, decided by content, never by file name:

    * 6 columns: TREC.
    * 3 columns whose third column holds only integers that run 1, 2, 3, ... for each query in file
      order (the MS MARCO layout): ranks.
    * 3 columns with any value that is not an integer (``2.5``, ``3.0``, ``1e-3``): scores.  Tevatron's
      writers always put a decimal point or exponent in a score.
    * 3 columns of integers in any other pattern (``5, 6, 7`` or ``9, 8, 7``) could be ranks or scores,
      and the two readings rank the passages differently: an InputError asks for ``kind``.

    NaN or infinite scores and empty ids are InputErrors naming the line.
    """
    if kind not in RUN_FORMATS:
        raise ValueError(f"run format must be one of {RUN_FORMATS}, got {kind!r}")
    path = Path(path)
    run: dict[str, dict[str, float]] = {}
    pattern = _RankPattern()
    rank_lines: dict[str, dict[int, int]] = {}  # explicit ranks: {qid: {rank: line}}, each rank once per query
    columns = None
    for number, line in iter_lines(path):
        if not line.strip():
            continue
        fields = line.split("\t") if "\t" in line else line.split()
        if columns is None:
            columns = 6 if kind == "trec" or (kind == "auto" and len(fields) == 6) else 3
        if len(fields) != columns:
            raise InputError(path, f"run line must have {columns} columns, found {len(fields)}", number)
        qid, pid, value = (fields[0], fields[2], fields[4]) if columns == 6 else fields
        qid, pid, value = qid.strip(), pid.strip(), value.strip()
        if not qid or not pid:
            raise InputError(path, "empty query or passage id", number)
        if kind == "rank":
            score = -_parse_rank(path, number, value, rank_lines.setdefault(qid, {}), qid)
        else:
            score = parse_finite(path, number, value, "score")
            if kind == "auto" and columns == 3:
                pattern.add(number, qid, value)
        hits = run.setdefault(qid, {})
        if pid in hits:
            raise InputError(path, f"passage {pid} listed twice for query {qid}", number)
        hits[pid] = score
    resolved = "trec" if columns == 6 else kind if kind != "auto" else _three_column_kind(path, pattern)
    if kind == "auto" and resolved == "rank":
        run = {qid: {pid: -value for pid, value in hits.items()} for qid, hits in run.items()}
    return run, resolved


def _parse_rank(path, number: int, text: str, seen: dict[int, int], qid: str) -> float:
    # 18 digits at most: int() refuses over 4300, and no run is deeper than 10**18
    if not _INTEGER.fullmatch(text) or len(text) > 18 or int(text) < 1:
        raise InputError(path, f"rank {text!r} is not a positive integer (of at most 18 digits)", number)
    rank = int(text)
    if rank in seen:
        raise InputError(path, f"rank {rank} given twice for query {qid} (first on line {seen[rank]})", number)
    seen[rank] = number
    return float(rank)


def iter_ranking_groups(path, trec_ids: bool = False) -> Iterator[tuple[str, list[tuple[str, str]]]]:
    """Yield ``(qid, [(pid, score_text), ...])`` for each consecutive block of a ``qid pid score`` file.

    Scores must be finite numbers.  A file whose third column runs 1, 2, 3, ... per query is an MS
    MARCO run (ranks, lower is better), not scores, and is refused at its end.  ``trec_ids``: refuse
    ids holding whitespace (they could not be written into a TREC run), naming the line.
    """
    current, hits = None, []
    pattern = _RankPattern()
    for number, fields in iter_tsv(path, 3):
        qid, pid, score = (f.strip() for f in fields)
        if not qid or not pid:
            raise InputError(path, "empty query or passage id", number)
        parse_finite(path, number, score, "score")
        if trec_ids:
            for what, value in (("query id", qid), ("passage id", pid)):
                if any(ch.isspace() for ch in value):
                    raise InputError(path, f"{what} {value!r} contains whitespace, which a TREC run cannot hold",
                                     number)
        pattern.add(number, qid, score)
        if qid != current and current is not None:
            yield current, hits
            hits = []
        current = qid
        hits.append((pid, score))
    if current is not None and pattern.ranks:
        raise InputError(path, "holds MS MARCO ranks (1, 2, 3... per query), not scores; give the "
                               "qid<TAB>pid<TAB>score ranking")
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
    return sum(1 for _, raw in iter_raw_lines(path) if raw.strip())


def iter_collection(path, start: int = 0, stop: int | None = None) -> Iterator[tuple[int, str, str, str]]:
    """Yield ``(line_number, pid, title, text)`` for rows ``[start, stop)`` (0-based, blank lines not
    counted; the whole file by default) of a ``pid\ttitle\ttext`` / ``pid\ttext`` TSV or BEIR JSON
    lines (``_id`` or ``docid``, ``title``, ``text``) collection, in constant memory.

    Rows before ``start`` are skipped as raw bytes, so parallel workers can each read their own slice
    of an 8.8M-passage corpus cheaply.  Duplicate ids are detected within the rows read (the whole
    file by default, as when the corpus is normalised).
    """
    path = Path(path)
    jsonl = path.suffix in (".jsonl", ".json")
    seen: set[str] = set()
    row = -1
    for number, raw in iter_raw_lines(path):
        if not raw.strip():
            continue
        row += 1
        if row < start:
            continue
        if stop is not None and row >= stop:
            break
        pid, title, text = _parse_collection_line(path, number, decode_line(path, number, raw), jsonl)
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
        out.writelines(marco_run_lines(path, ranking))


def marco_run_lines(path, ranking: Iterable[tuple[str, Sequence[tuple[str, object]]]]) -> Iterator[str]:
    """The lines of :func:`write_marco_run`; ``path`` names the file in errors."""
    for qid, hits in ranking:
        qid = checked_id(path, qid, "query id")
        for rank, (pid, _score) in enumerate(hits, start=1):
            yield f"{qid}\t{checked_id(path, pid, 'passage id')}\t{rank}\n"


def write_trec_run(path, ranking: Iterable[tuple[str, Sequence[tuple[str, object]]]], tag: str = "tevatron") -> None:
    """Write a TREC run, ``qid Q0 pid rank score tag`` (space-separated), from ``(qid, hits)`` groups best first.

    Scores are written as given (strings pass through unchanged, so no precision is lost)."""
    with atomic_text_writer(path) as out:
        out.writelines(trec_run_lines(path, ranking, tag))


def trec_run_lines(path, ranking: Iterable[tuple[str, Sequence[tuple[str, object]]]], tag: str = "tevatron"
                   ) -> Iterator[str]:
    """The lines of :func:`write_trec_run`; ids holding whitespace are refused (they would add columns)."""
    check_trec_tag(tag)
    for qid, hits in ranking:
        qid = checked_id(path, qid, "query id", whitespace=False)
        for rank, (pid, score) in enumerate(hits, start=1):
            if not isinstance(score, str) and not math.isfinite(float(score)):
                raise InputError(path, f"cannot write score {score!r} for query {qid}: not a finite number")
            yield f"{qid} Q0 {checked_id(path, pid, 'passage id', whitespace=False)} {rank} {score} {tag}\n"


def check_trec_tag(tag: str) -> None:
    if not tag or any(ch.isspace() for ch in tag):
        raise ValueError(f"TREC run tag must be one non-empty word, got {tag!r}")
