#!/usr/bin/env bash
# Stage 2: train on $OUT/train-hn, the BM25 groups (split*.json) and the mined hard-negative groups
# (split*.hn.json) together (the coCondenser recipe), from the initial model (HN_INIT=initial) or the
# stage-1 model (HN_INIT=stage1); then encode, search, reduce and evaluate on the dev queries.
#
#   bash train_hn.sh               # after run.sh and mine_hard_neg.sh, with the same settings
#
# Settings: settings.sh. Every step calls its stage, which keeps an output that is up to date.
set -Eeuo pipefail
set -a; source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"; set +a
source "$(dirname "${BASH_SOURCE[0]}")/msmarco-passage-ranking/pipeline_common.sh"

do_check_stage1() { check_stage1_model; }
do_check_train_hn() {
  [[ -f $OUT/train-hn/.complete ]] && compgen -G "$OUT/train-hn/split*.hn.json" >/dev/null \
    || die "no hard-negative training set in $OUT/train-hn; run mine_hard_neg.sh first (same settings)"
}
do_train_hn() { train_model "$INIT_MODEL" "$OUT/train-hn" "$OUT/model-hn" "$HN_LR" "$HN_EPOCHS" $(retrain_flag); }
do_stage2_eval() { encode_search_eval "$OUT/model-hn" stage2; }

main() {
  resolve_settings
  resolve_precision
  case $HN_INIT in
    initial) INIT_MODEL=$MODEL ;;
    stage1) INIT_MODEL=$OUT/model ;;
    *) die "HN_INIT must be initial or stage1, not '$HN_INIT' (settings.sh)" ;;
  esac
  STEP_LOG=$OUT/step_times.log
  print_settings
  require_prepared_data
  if ! has_train_data; then nothing_to_train; return 0; fi
  if [[ $HN_INIT == initial ]]; then settle_hub_access; require_model "$MODEL"; fi
  run_step check_stage1        # the hard negatives came from it, whichever model stage 2 starts from
  run_step check_train_hn
  run_step train_hn
  run_step stage2_eval
  print_step_times
}

main "$@"
