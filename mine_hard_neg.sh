#!/usr/bin/env bash
# Mine hard negatives with the stage-1 model: encode the training queries, search the whole corpus
# (its stage-1 encodings) at depth HN_DEPTH, write train.rank.tsv, and build the hard-negative
# training set (positives excluded; the top SKIP_TOP ranks skipped as likely false negatives).
#
#   bash mine_hard_neg.sh          # after run.sh, with the same environment
#
# Settings come from the top of run.sh. Re-running skips finished steps.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/run.sh" --settings-only
source "$(dirname "${BASH_SOURCE[0]}")/msmarco-passage-ranking/pipeline_common.sh"
STEP_LOG=$OUT/step_times.log

done_check() { have_files "$OUT/model/.complete"; }
do_check() { echo "error: no finished stage-1 model in $OUT/model; run run.sh first" >&2; return 1; }

done_encode_corpus() { return 1; }       # the encoder keeps complete split encodings
do_encode_corpus() { encode_corpus "$OUT/model" "$OUT/encoding/stage1/corpus"; }

done_encode_train_queries() { have_files "$OUT/encoding/stage1/train.query.pt"; }
do_encode_train_queries() {
  encode_queries "$OUT/model" "$DATA_DIR/bert/query/train.query.json" "$OUT/encoding/stage1/train.query.pt"
}

done_search_train() { have_files "$OUT/ranking/stage1/train.rank.tsv"; }
do_search_train() {
  search_and_reduce "$OUT/encoding/stage1/train.query.pt" "$OUT/encoding/stage1/corpus" \
    "$OUT/ranking/stage1/train-intermediate" "$HN_DEPTH" "$OUT/ranking/stage1/train.rank.tsv"
}

done_build_train_hn() { have_files "$OUT/train-hn/.complete"; }
do_build_train_hn() {
  "$PYTHON" "$SCRIPTS/build_train_hn.py" --tokenizer_name "$TOKENIZER" --hn_file "$OUT/ranking/stage1/train.rank.tsv" \
    --qrels "$DATA_DIR/qrels.train.tsv" --queries "$DATA_DIR/train.query.txt" --collection "$DATA_DIR/corpus.tsv" \
    --save_to "$OUT/train-hn" --depth "$HN_DEPTH" --n_sample "$N_SAMPLE" --seed "$SEED" --skip_top "$SKIP_TOP" \
    --q_max_len "$Q_MAX_LEN" --p_max_len "$P_MAX_LEN"
  touch "$OUT/train-hn/.complete"
}

main() {
  run_step check
  run_step encode_corpus
  run_step encode_train_queries
  run_step search_train
  run_step build_train_hn
  print_step_times
}

main "$@"
