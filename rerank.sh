#!/usr/bin/env bash
# Stage 3a: train a cross-encoder reranker on $OUT/train-hn (the stage-2 training groups: BM25 and mined
# hard negatives), rerank the top RERANK_DEPTH of each dev query of the BM25 ranking and of the stage-2
# ranking, and evaluate both. Everything goes into RERANK_DIR ($OUT/rerank-<hash of the reranker settings>,
# printed at the start): reranker/, ranking/rerank_{bm25,stage2}/dev.rank.tsv, metrics/rerank_bm25.json,
# metrics/rerank_stage2.json.
#
#   bash rerank.sh                 # after run.sh, mine_hard_neg.sh and train_hn.sh, with the same settings
#
# Settings: settings.sh (RERANKER_*, RERANK_*). Every step calls its stage, which keeps an output that is
# up to date (same inputs and arguments) and says so; a re-run therefore redoes only what changed.
set -Eeuo pipefail
set -a; source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"; set +a
source "$(dirname "${BASH_SOURCE[0]}")/msmarco-passage-ranking/pipeline_common.sh"

do_check_stage2() { check_stage2_model; }
do_train_reranker() { train_reranker $(retrain_flag); }
do_rerank_bm25() { rerank_and_eval "$DATA_DIR/bm25.dev.rank.tsv" rerank_bm25; }
do_rerank_stage2() { rerank_and_eval "$OUT/ranking/stage2/dev.rank.tsv" rerank_stage2; }

main() {
  resolve_settings
  resolve_precision
  STEP_LOG=$RERANK_DIR/step_times.log
  print_settings stage3
  require_prepared_data
  require_stage3_inputs
  if ! has_train_data; then nothing_to_train "; no reranker to train"; return 0; fi
  settle_hub_access
  require_model "$RERANKER_MODEL"
  run_step check_stage2        # its training groups train the reranker, its ranking is reranked
  run_step train_reranker
  run_step rerank_stage2       # the headline row first
  run_step rerank_bm25
  print_step_times
}

main "$@"
