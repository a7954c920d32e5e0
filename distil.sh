#!/usr/bin/env bash
# Stage 3b: distil the reranker into the bi-encoder. The reranker scores every passage of the stage-2
# training groups (train-distil/: the groups with positive_scores/negative_scores), the bi-encoder
# learns its distribution over each group (model-distil/: tevatron.driver.train --distillation, from
# DISTIL_INIT), then encode, search, reduce and evaluate on the dev queries (metrics/distil.json). Everything
# goes into DISTIL_DIR ($RERANK_DIR/distil-<hash of the DISTIL_* settings>, printed at the start).
# DISTIL_FOLDS=N (N >= 2): the teacher is N rerankers instead, trained here with the reranker settings, each
# without one N-th of the training queries ($RERANK_DIR/folds-N/reranker-k), each scoring only that N-th.
#
#   bash distil.sh                 # after rerank.sh, with the same settings
#   DISTIL_FOLDS=2 bash distil.sh  # after run.sh --all: a teacher that never scores groups it trained on
#
# Settings: settings.sh (DISTIL_*). Every step calls its stage, which keeps an output that is up to date.
set -Eeuo pipefail
set -a; source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"; set +a
source "$(dirname "${BASH_SOURCE[0]}")/msmarco-passage-ranking/pipeline_common.sh"

do_check_stage2() { check_stage2_model; }
do_check_reranker() { check_reranker; }
do_train_fold_rerankers() { train_fold_rerankers $(retrain_flag); }
do_score_groups() { score_groups; }
do_train_distil() { train_distilled $(retrain_flag); }
do_distil_eval() { encode_search_eval "$DISTIL_DIR/model-distil" distil "$DISTIL_DIR"; }

main() {
  resolve_settings
  resolve_precision
  init_model_for DISTIL_INIT DISTIL_INIT_MODEL
  STEP_LOG=$DISTIL_DIR/step_times.log
  print_settings stage3
  require_prepared_data
  require_stage3_inputs
  if ! has_train_data; then nothing_to_train; return 0; fi
  if [[ $DISTIL_INIT == initial ]]; then settle_hub_access; require_model "$MODEL"; fi
  run_step check_stage2        # the training groups the teacher scores come from
  if [[ $DISTIL_FOLDS == 0 ]]; then
    run_step check_reranker    # the teacher
  else
    run_step train_fold_rerankers  # the teacher: one reranker per query fold, each without its fold
  fi
  run_step score_groups
  run_step train_distil
  run_step distil_eval
  print_step_times
}

main "$@"
