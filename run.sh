#!/usr/bin/env bash
# Stage 1: prepare the data (get_data.sh), score BM25, train on BM25 negatives, encode the corpus splits and
# the dev queries, search each split, reduce, write the MS MARCO run and print MRR@10.
#
#   bash run.sh                                                   # MS MARCO with bert-base-uncased (the seed)
#   PROFILE=quick DATA=../shared/data/scifact bash run.sh --all   # SciFact + packaged MiniLM, all stages
#
# --all goes on with mine_hard_neg.sh and train_hn.sh (stage 2) after stage 1. Settings: settings.sh (edit
# there, or set them in the environment). Every step calls its stage, which keeps an output that is up to
# date (same inputs and arguments) and says so; a re-run therefore redoes only what changed.
set -Eeuo pipefail
set -a; source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"; set +a
source "$(dirname "${BASH_SOURCE[0]}")/msmarco-passage-ranking/pipeline_common.sh"

do_data() { bash "$REPO_ROOT/get_data.sh"; }
do_bm25_eval() { evaluate_run "$DATA_DIR/bm25.dev.rank.tsv" bm25; }
do_zero_shot() { encode_search_eval "$MODEL" zero_shot; }
do_train() { train_stage1 $(retrain_flag); }
do_stage1_eval() { encode_search_eval "$OUT/model" stage1; }

main() {
  resolve_settings
  resolve_precision
  STEP_LOG=$OUT/step_times.log
  print_settings
  settle_hub_access
  require_model "$MODEL"
  mkdir -p "$OUT"
  run_step data
  run_step bm25_eval
  if ! has_train_data; then
    run_step zero_shot            # the starting model is the only one there is to score
    print_step_times
    nothing_to_train "; the BM25 and zero-shot scores are in $OUT/metrics"
    return 0
  fi
  if [[ $ZERO_SHOT == 1 ]]; then run_step zero_shot; else skip_step zero_shot "not requested (ZERO_SHOT=0)"; fi
  run_step train
  run_step stage1_eval
  print_step_times
  if [[ ${1:-} == --all ]]; then
    bash "$REPO_ROOT/mine_hard_neg.sh"
    bash "$REPO_ROOT/train_hn.sh"
  fi
}

main "$@"
