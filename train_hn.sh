#!/usr/bin/env bash
# Stage 2: train on the BM25-negative set plus the mined hard-negative set (the coCondenser recipe),
# from the initial model (HN_INIT=initial) or the stage-1 model (HN_INIT=stage1); then encode, search,
# reduce and evaluate on the dev queries.
#
#   bash train_hn.sh               # after run.sh and mine_hard_neg.sh, with the same environment
#
# Settings come from the top of run.sh. Re-running skips finished steps.
set -Eeuo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/run.sh" --settings-only
source "$(dirname "${BASH_SOURCE[0]}")/msmarco-passage-ranking/pipeline_common.sh"
STEP_LOG=$OUT/step_times.log

case $HN_INIT in
  initial) INIT_MODEL=$MODEL ;;
  stage1) INIT_MODEL=$OUT/model ;;
  *) echo "error: HN_INIT must be initial or stage1, not '$HN_INIT'" >&2; exit 2 ;;
esac
HN_MODEL=$OUT/model-hn

done_check() { have_files "$OUT/train-hn/.complete"; }
do_check() { echo "error: no hard-negative training set in $OUT/train-hn; run mine_hard_neg.sh first" >&2; return 1; }

# One training folder holding both sets (links, so nothing is copied).
done_combine() { return 1; }
do_combine() {
  local dir=$OUT/train-stage2 file
  rm -rf "$dir"; mkdir -p "$dir"
  for file in "$DATA_DIR"/bert/train/*.json; do ln -s "$(cd "$(dirname "$file")" && pwd)/$(basename "$file")" "$dir/bm25-$(basename "$file")"; done
  for file in "$OUT"/train-hn/*.json; do ln -s "$(cd "$(dirname "$file")" && pwd)/$(basename "$file")" "$dir/hn-$(basename "$file")"; done
}

done_train_hn() { have_files "$HN_MODEL/.complete"; }
do_train_hn() { train_model "$INIT_MODEL" "$OUT/train-stage2" "$HN_MODEL" "$HN_LR" "$HN_EPOCHS"; }

done_stage2_eval() { have_files "$OUT/metrics/stage2.json"; }
do_stage2_eval() { encode_search_eval "$HN_MODEL" stage2; }

main() {
  run_step check
  run_step combine
  run_step train_hn
  run_step stage2_eval
  print_step_times
}

main "$@"
