"""Top-k under the ranking rule shared by the retriever and the reducer.

Ranking rule: score descending, then position ascending (a passage's row in the concatenation of the
sorted shard files, or an index within one shard).  :mod:`tevatron.faiss_retriever.retriever` uses these
helpers for its blocked search, :mod:`tevatron.faiss_retriever.reducer` to merge per-shard rankings, so
both order ties the same way.
"""
from __future__ import annotations

import torch


def order_by_score_then_position(scores: torch.Tensor, positions: torch.Tensor
                                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sort each row by score descending, ties by position ascending (two small [q, k] sorts)."""
    positions, by_position = positions.sort(dim=1)
    scores = scores.gather(1, by_position)
    scores, by_score = scores.sort(dim=1, descending=True, stable=True)
    return scores, positions.gather(1, by_score)


def exact_topk(scores: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` columns per row under the ranking rule, exact even when ties straddle the k-th place.

    ``torch.topk`` picks arbitrarily among tied values, so we ask for ``k + 1``: a row whose k-th and
    (k+1)-th values differ has exactly k candidates; the rare rows where they are equal are redone
    from the full score row, taking the lowest columns among the tied values.
    """
    columns = scores.shape[1]
    if columns <= k:
        values, order = scores.sort(dim=1, descending=True, stable=True)
        return values, order
    values, order = torch.topk(scores, k + 1, dim=1)
    tied_rows = (values[:, k - 1] == values[:, k]).nonzero().flatten().tolist()
    values, order = values[:, :k].contiguous(), order[:, :k].contiguous()
    for row in tied_rows:
        kth = values[row, k - 1]
        above = (scores[row] > kth).nonzero().flatten()
        tied = (scores[row] == kth).nonzero().flatten()[: k - above.numel()]
        order[row] = torch.cat([above, tied])
        values[row] = scores[row, order[row]]
    return order_by_score_then_position(values, order)


def merge_topk(scores_a, positions_a, scores_b, positions_b, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge two ranked lists per row where every position in ``a`` precedes every one in ``b``.

    Both inputs are ranked (score descending, ties by position), so each entry's place in the merged
    row is its own rank plus the number of entries of the other list that beat it: a binary search
    instead of a sort.  On equal scores ``a`` entries count as better, which is exactly the
    lower-position-first rule.
    """
    width_a, width_b = scores_a.shape[1], scores_b.shape[1]
    keep = min(k, width_a + width_b)
    if width_a == 0 or width_b == 0:
        scores, positions = (scores_b, positions_b) if width_a == 0 else (scores_a, positions_a)
        return scores[:, :keep].contiguous(), positions[:, :keep].contiguous()
    ascending_a, ascending_b = scores_a.neg().contiguous(), scores_b.neg().contiguous()
    slots_a = torch.searchsorted(ascending_b, ascending_a, right=False) + torch.arange(width_a)
    slots_b = torch.searchsorted(ascending_a, ascending_b, right=True) + torch.arange(width_b)
    rows = scores_a.shape[0]
    scores = scores_a.new_empty((rows, width_a + width_b))
    positions = torch.empty((rows, width_a + width_b), dtype=torch.int64)
    scores.scatter_(1, slots_a, scores_a).scatter_(1, slots_b, scores_b)
    positions.scatter_(1, slots_a, positions_a).scatter_(1, slots_b, positions_b)
    return scores[:, :keep].contiguous(), positions[:, :keep].contiguous()


# entries_above scans group maxima first: one pass over the scores instead of a full comparison mask and
# its nonzero (~3x less time where few entries pass, as after the first blocks of a search)
ENTRY_GROUP = 128


def entries_above(scores: torch.Tensor, threshold: torch.Tensor, strict: bool = True
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(rows, columns)`` of the entries above each row's ``threshold`` (``[q, 1]``; ``>`` when
    ``strict``, else ``>=``), row by row with columns ascending, like ``nonzero``.

    Only the groups of ``ENTRY_GROUP`` columns whose maximum passes are compared entry by entry.
    """
    compare = torch.gt if strict else torch.ge
    rows_count, width = scores.shape
    grouped_width = width - width % ENTRY_GROUP
    groups = scores[:, :grouped_width].view(rows_count, -1, ENTRY_GROUP) if grouped_width else None
    found_rows, found_columns = [], []
    if groups is not None:
        group_rows, group_numbers = compare(groups.amax(dim=2), threshold).nonzero(as_tuple=True)
        members = groups[group_rows, group_numbers]
        member_index, offsets = compare(members, threshold[group_rows]).nonzero(as_tuple=True)
        found_rows.append(group_rows[member_index])
        found_columns.append(group_numbers[member_index] * ENTRY_GROUP + offsets)
    if grouped_width < width:  # the last, partial group
        tail_rows, tail_columns = compare(scores[:, grouped_width:], threshold).nonzero(as_tuple=True)
        found_rows.append(tail_rows)
        found_columns.append(tail_columns + grouped_width)
    if len(found_rows) == 1:
        return found_rows[0], found_columns[0]
    rows, columns = torch.cat(found_rows), torch.cat(found_columns)
    order = (rows * width + columns).argsort()
    return rows[order], columns[order]


def candidates_above(scores: torch.Tensor, threshold: torch.Tensor, max_per_row: int
                     ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Entries strictly above each row's threshold, ranked into ``[q, m]`` (padding last: -inf, -1).

    Equal scores are excluded because a later block loses ties.  Returns None when some row has more
    than ``max_per_row`` candidates (then a plain top-k over the block is cheaper).
    """
    rows, columns = entries_above(scores, threshold)
    per_row = torch.bincount(rows, minlength=scores.shape[0])
    if rows.numel() and int(per_row.max()) > max_per_row:
        return None
    return ranked_candidates(rows, columns, scores[rows, columns], scores.shape[0], per_row)


def ranked_candidates(rows: torch.Tensor, columns: torch.Tensor, values: torch.Tensor, row_count: int,
                      per_row: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries ``(rows, columns, values)``, listed row by row with columns ascending (``nonzero``'s
    order), packed into ranked ``[row_count, m]`` rows (score descending, ties by column; padding last:
    -inf, -1)."""
    if rows.numel() == 0:
        return values.new_empty((row_count, 0)), rows.new_empty((row_count, 0))
    if per_row is None:
        per_row = torch.bincount(rows, minlength=row_count)
    row_start = torch.cumsum(per_row, 0) - per_row
    slot = torch.arange(rows.numel()) - row_start[rows]
    widest = int(per_row.max())
    packed_scores = values.new_full((row_count, widest), float("-inf"))
    packed_columns = torch.full((row_count, widest), -1, dtype=torch.int64)
    packed_scores[rows, slot] = values
    packed_columns[rows, slot] = columns
    packed_scores, by_score = packed_scores.sort(dim=1, descending=True, stable=True)  # columns already ascend
    return packed_scores, packed_columns.gather(1, by_score)


def is_ranked(scores: torch.Tensor, indices: torch.Tensor) -> bool:
    """True when every row is already score descending, ties by index ascending, with no padding."""
    if scores.shape[1] < 2:
        return bool((indices >= 0).all())
    later, earlier = scores[:, 1:], scores[:, :-1]
    in_order = (later < earlier) | ((later == earlier) & (indices[:, 1:] > indices[:, :-1]))
    return bool(in_order.all()) and bool((indices >= 0).all())


def ranked_shard_rows(scores: torch.Tensor, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows ordered by score descending then index ascending; empty slots (index < 0) go last.

    The retriever already writes this order, and then this is one cheap check; files from other
    writers (FAISS pads with -1, some do not sort) are re-sorted so the merge stays correct.
    """
    if is_ranked(scores, indices):
        return scores, indices
    scores = torch.where(indices < 0, torch.full_like(scores, float("-inf")), scores)
    return order_by_score_then_position(scores, indices)
