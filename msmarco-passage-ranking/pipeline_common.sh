# Shared by get_data.sh, run.sh, mine_hard_neg.sh and train_hn.sh (sourced, not run).
#
#   run_step NAME   runs do_NAME unless done_NAME says its outputs are complete; prints the step name
#                   and its wall time, and on failure names the step and stops the script.
#   encode_search_eval MODEL_DIR NAME   encodes every corpus split and the dev queries with a model,
#                   searches each split, reduces, writes the MS MARCO run and evaluates it.

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPTS="$REPO_ROOT/msmarco-passage-ranking"
PYTHON=${PYTHON:-python}
CURRENT_STEP=setup
STEP_TIMES=()
STEP_LOG=${STEP_LOG:-}

trap 'echo "$(basename "$0"): step \"$CURRENT_STEP\" failed (exit $?)" >&2' ERR

now_ms() { date +%s%3N; }

run_step() {
  local name=$1 start elapsed line
  CURRENT_STEP=$name
  if "done_$name"; then
    echo "==> $name: outputs complete, skipped"
    STEP_TIMES+=("$name skipped")
    return 0
  fi
  echo "==> $name"
  start=$(now_ms)
  "do_$name"
  elapsed=$(( $(now_ms) - start ))
  line=$(printf '%s %d.%03ds' "$name" $((elapsed / 1000)) $((elapsed % 1000)))
  echo "==> $line"
  STEP_TIMES+=("$line")
  if [[ -n $STEP_LOG ]]; then mkdir -p "$(dirname "$STEP_LOG")"; echo "$(basename "$0") $line" >>"$STEP_LOG"; fi
}

print_step_times() {
  local line
  echo "step times ($(basename "$0")):"
  for line in "${STEP_TIMES[@]}"; do echo "  $line"; done
}

have_files() { local f; for f in "$@"; do [[ -f $f ]] || return 1; done; }

# --fp16 where a GPU is present (FP16=auto), never on CPU.
precision_flags() {
  case ${FP16:-auto} in
    1|true|yes) echo "--fp16" ;;
    0|false|no) echo "" ;;
    *) "$PYTHON" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' && echo "--fp16" || echo "" ;;
  esac
}

normalize_flag() { [[ ${NORMALIZE:-0} == 1 ]] && echo "--normalize" || true; }

# train_model INIT_MODEL TRAIN_DIR OUTPUT_DIR LR EPOCHS: one training run with the settings of run.sh;
# a finished run is marked OUTPUT_DIR/.complete (an interrupted one resumes from its last checkpoint).
train_model() {
  "$PYTHON" -m tevatron.driver.train --output_dir "$3" --model_name_or_path "$1" --train_dir "$2" \
    --tokenizer_name "$TOKENIZER" --pooling "$POOLING" --learning_rate "$4" --num_train_epochs "$5" \
    --per_device_train_batch_size "$BATCH" --train_n_passages "$N_PASSAGES" \
    --q_max_len "$Q_MAX_LEN" --p_max_len "$P_MAX_LEN" --seed "$SEED" \
    --temperature "$TEMPERATURE" $(normalize_flag) \
    --save_steps "$SAVE_STEPS" --logging_steps 50 --dataloader_num_workers "$WORKERS" \
    $(precision_flags) $TRAIN_EXTRA
  touch "$3/.complete"
}

corpus_splits() { ls "$DATA_DIR"/bert/corpus/split*.json 2>/dev/null | sort; }

# encode_corpus MODEL_DIR ENC_DIR: one encodings file per corpus split (complete ones are kept).
encode_corpus() {
  local model=$1 enc_dir=$2 split name
  mkdir -p "$enc_dir"
  for split in $(corpus_splits); do
    name=$(basename "$split" .json)
    "$PYTHON" -m tevatron.driver.encode --output_dir "$enc_dir" --model_name_or_path "$model" \
      --per_device_eval_batch_size "$ENCODE_BATCH" --p_max_len "${CORPUS_MAX_LEN:-$P_MAX_LEN}" --pooling "$POOLING" \
      --encode_in_path "$split" --encoded_save_path "$enc_dir/$name.pt" $(precision_flags)
  done
}

# encode_queries MODEL_DIR QUERY_JSON OUT_PT
encode_queries() {
  "$PYTHON" -m tevatron.driver.encode --output_dir "$(dirname "$3")" --model_name_or_path "$1" \
    --per_device_eval_batch_size "$ENCODE_BATCH" --q_max_len "$Q_MAX_LEN" --pooling "$POOLING" \
    --encode_is_qry --encode_in_path "$2" --encoded_save_path "$3" $(precision_flags)
}

# search_and_reduce QUERY_PT ENC_DIR RANK_DIR DEPTH OUT_RANKING: search every split, merge them.
search_and_reduce() {
  local query=$1 enc_dir=$2 rank_dir=$3 depth=$4 out=$5 shard
  mkdir -p "$rank_dir"
  for shard in "$enc_dir"/split*.pt; do
    "$PYTHON" -m tevatron.faiss_retriever --query_reps "$query" --passage_reps "$shard" --depth "$depth" \
      --batch_size "${SEARCH_BATCH:-4096}" --save_ranking_to "$rank_dir/$(basename "$shard" .pt)"
  done
  "$PYTHON" -m tevatron.faiss_retriever.reducer --score_dir "$rank_dir" --query "$query" \
    --save_ranking_to "$out" --depth "$depth"
}

# evaluate_run RUN NAME: MS MARCO metrics on the dev qrels, printed and saved as $OUT/metrics/NAME.json
evaluate_run() {
  mkdir -p "$OUT/metrics"
  "$PYTHON" "$SCRIPTS/ms_marco_eval.py" "$DATA_DIR/qrels.dev.tsv" "$1" --json "$OUT/metrics/$2.json"
}

# encode_search_eval MODEL_DIR NAME: the whole evaluation of one model on the dev queries.
encode_search_eval() {
  local model=$1 name=$2
  encode_corpus "$model" "$OUT/encoding/$name/corpus"
  encode_queries "$model" "$DATA_DIR/bert/query/dev.query.json" "$OUT/encoding/$name/dev.query.pt"
  search_and_reduce "$OUT/encoding/$name/dev.query.pt" "$OUT/encoding/$name/corpus" \
    "$OUT/ranking/$name/intermediate" "$DEPTH" "$OUT/ranking/$name/dev.rank.tsv"
  "$PYTHON" "$SCRIPTS/score_to_marco.py" "$OUT/ranking/$name/dev.rank.tsv"
  evaluate_run "$OUT/ranking/$name/dev.rank.tsv" "$name"
}
