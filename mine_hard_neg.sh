#!/usr/bin/env bash
# Mine hard negatives with the stage-1 model: encode the training queries, search the whole corpus (its
# stage-1 encodings) at depth HN_DEPTH, write train.rank.tsv, and build the hard-negative training groups
# $OUT/train-hn/split*.hn.json (positives excluded; the top SKIP_TOP ranks skipped as likely false
# negatives). As in Tevatron v1, the BM25 groups (split*.json) are linked in beside them, so $OUT/train-hn
# is stage 2's training folder.
#
#   bash mine_hard_neg.sh          # after run.sh, with the same settings
#
# Settings: settings.sh. Every step calls its stage, which keeps an output that is up to date.
set -Eeuo pipefail
set -a; source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"; set +a
source "$(dirname "${BASH_SOURCE[0]}")/msmarco-passage-ranking/pipeline_common.sh"

do_check_stage1() { check_stage1_model; }
do_encode_corpus() { encode_corpus "$OUT/model" "$OUT/encoding/stage1/corpus"; }
do_encode_train_queries() {
  encode_queries "$OUT/model" "$INPUT_DIR/query/train.query.json" "$OUT/encoding/stage1/train.query.pt"
}
do_search_train() {
  search_and_reduce "$OUT/encoding/stage1/train.query.pt" "$OUT/encoding/stage1/corpus" \
    "$OUT/ranking/stage1/train-intermediate" "$HN_DEPTH" "$OUT/ranking/stage1/train.rank.tsv"
}
do_build_train_hn() {
  format_args both
  "$PYTHON" "$SCRIPTS/build_train_hn.py" --tokenizer_name "$TOKENIZER" --hn_file "$OUT/ranking/stage1/train.rank.tsv" \
    --qrels "$DATA_DIR/qrels.train.tsv" --queries "$DATA_DIR/train.query.txt" --collection "$DATA_DIR/corpus.tsv" \
    --save_to "$OUT/train-hn" --depth "$HN_DEPTH" --n_sample "$N_SAMPLE" --seed "$SEED" --skip_top "$SKIP_TOP" \
    --q_max_len "$Q_MAX_LEN" --p_max_len "$P_MAX_LEN" "${FORMAT_ARGS[@]}"
}
do_link_bm25_groups() { link_bm25_groups "$OUT/train-hn"; }

main() {
  resolve_settings
  resolve_precision
  STEP_LOG=$OUT/step_times.log
  print_settings
  require_prepared_data
  if ! has_train_data; then nothing_to_train "; nothing to mine"; return 0; fi
  run_step check_stage1
  run_step encode_corpus
  run_step encode_train_queries
  run_step search_train
  run_step build_train_hn
  run_step link_bm25_groups
  print_step_times
}

main "$@"
