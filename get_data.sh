#!/usr/bin/env bash
# Fetch and preprocess the training/evaluation data into DATA_DIR (MS MARCO layout: tevatron/preprocess/layout.py):
#   [fetch msmarco] -> prepare_data -> bm25_negatives (+ dev run) -> build_train
#   -> tokenize_queries (train, dev) -> tokenize_passages
# Every step calls its stage, which keeps an output made from the same inputs and arguments ("up to date")
# and redoes one that is not, so an interrupted run can simply be restarted.
#
#   bash get_data.sh                              # MS MARCO (RocketQA corpus with titles) into marco/
#   DATA=/path/to/marco bash get_data.sh          # a local copy in RocketQA layout, also into marco/
#   DATA=scifact bash get_data.sh                 # a BEIR data set, downloaded, into marco/scifact/
#
# Settings (DATA, DATA_DIR, TOKENIZER, N_SPLITS, ...) are in settings.sh, shared with the other scripts.
set -Eeuo pipefail
set -a; source "$(dirname "${BASH_SOURCE[0]}")/settings.sh"; set +a
source "$(dirname "${BASH_SOURCE[0]}")/msmarco-passage-ranking/pipeline_common.sh"

# download URL TARGET: atomic (via TARGET.part); offline it fails within CONNECT_TIMEOUT with one line.
download() {
  local url=$1 target=$2 status=0
  echo "downloading $url"
  if command -v curl >/dev/null 2>&1; then
    curl -fsL --connect-timeout "$CONNECT_TIMEOUT" --speed-time 120 --speed-limit 1024 -o "$target.part" "$url" \
      || status=$?
  else
    wget -q --connect-timeout="$CONNECT_TIMEOUT" --read-timeout=120 --tries=1 -O "$target.part" "$url" || status=$?
  fi
  if (( status != 0 )); then
    rm -f "$target.part"
    echo "error: cannot download $url (exit $status; offline?); set DATA=/path/to/local/copy" \
         "(a folder in MS MARCO/RocketQA or BEIR layout)" >&2
    exit 1
  fi
  mv "$target.part" "$target"
}

# ----------------------------------------------------------------------------- steps
# The download is the one step without a Python stage: a marker naming the URLs says it finished.
do_fetch_msmarco() {
  local marker=$RAW_DIR/marco/.downloaded wanted
  wanted=$(printf '%s\n%s\n' "$ROCKETQA_URL" "$QRELS_TRAIN_URL")
  if [[ -f $marker && $(cat "$marker") == "$wanted" ]]; then
    echo "$RAW_DIR/marco is up to date (downloaded from the same URLs); skipping"
    return 0
  fi
  mkdir -p "$RAW_DIR"
  rm -f "$marker"
  if [[ ! -f $RAW_DIR/marco/para.txt ]]; then
    [[ -f $RAW_DIR/marco.tar.gz ]] || download "$ROCKETQA_URL" "$RAW_DIR/marco.tar.gz"
    rm -rf "$RAW_DIR/.extract" && mkdir -p "$RAW_DIR/.extract"
    tar -xzf "$RAW_DIR/marco.tar.gz" -C "$RAW_DIR/.extract"
    rm -rf "$RAW_DIR/marco" && mv "$RAW_DIR/.extract/marco" "$RAW_DIR/marco" && rm -rf "$RAW_DIR/.extract"
    rm -f "$RAW_DIR/marco.tar.gz"
  fi
  # RocketQA's training qrels are replaced by the official ones, as in Tevatron.
  download "$QRELS_TRAIN_URL" "$RAW_DIR/marco/qrels.train.tsv"
  echo "$wanted" >"$marker"
}

do_prepare_data() { "$PYTHON" "$SCRIPTS/prepare_data.py" --source "$SOURCE" --out "$DATA_DIR"; }

do_bm25_negatives() {
  local train_args=()
  has_train_data || train_args=(--no_negatives)
  "$PYTHON" "$SCRIPTS/bm25_negatives.py" --data_dir "$DATA_DIR" --dev_run "$DATA_DIR/bm25.dev.rank.tsv" \
    --threads "$BM25_THREADS" "${train_args[@]}"
}

do_build_train() {
  format_args both
  "$PYTHON" "$SCRIPTS/build_train.py" --tokenizer_name "$TOKENIZER" \
    --negative_file "$DATA_DIR/train.negatives.tsv" --qrels "$DATA_DIR/qrels.train.tsv" \
    --queries "$DATA_DIR/train.query.txt" --collection "$DATA_DIR/corpus.tsv" --save_to "$INPUT_DIR/train" \
    --n_sample "$N_SAMPLE" --seed "$SEED" --q_max_len "$Q_MAX_LEN" --p_max_len "$P_MAX_LEN" "${FORMAT_ARGS[@]}"
}

do_tokenize_train_queries() {
  format_args query
  "$PYTHON" "$SCRIPTS/tokenize_queries.py" --tokenizer_name "$TOKENIZER" --query_file "$DATA_DIR/train.query.txt" \
    --save_to "$INPUT_DIR/query/train.query.json" --q_max_len "$Q_MAX_LEN" "${FORMAT_ARGS[@]}"
}

do_tokenize_dev_queries() {
  format_args query
  "$PYTHON" "$SCRIPTS/tokenize_queries.py" --tokenizer_name "$TOKENIZER" --query_file "$DATA_DIR/dev.query.txt" \
    --save_to "$INPUT_DIR/query/dev.query.json" --q_max_len "$Q_MAX_LEN" "${FORMAT_ARGS[@]}"
}

do_tokenize_passages() {
  format_args passage
  "$PYTHON" "$SCRIPTS/tokenize_passages.py" --tokenizer_name "$TOKENIZER" --file "$DATA_DIR/corpus.tsv" \
    --save_to "$INPUT_DIR/corpus" --n_splits "$N_SPLITS" --p_max_len "$CORPUS_MAX_LEN" --num_workers "$NUM_WORKERS" \
    "${FORMAT_ARGS[@]}"
}

# ----------------------------------------------------------------------------- main
main() {
  local total_start elapsed entry
  total_start=$(now_ms)
  resolve_settings
  RAW_DIR=$DATA_DIR/download
  echo "data: DATA=$DATA -> $DATA_DIR (tokenizer $TOKENIZER, $FORMAT in $INPUT_DIR)"
  mkdir -p "$DATA_DIR"
  if [[ $DATA == msmarco ]]; then
    run_step fetch_msmarco
    SOURCE=$RAW_DIR/marco
  else
    SOURCE=$DATA             # a local folder, or a BEIR name that prepare_data downloads
  fi
  settle_hub_access
  run_step prepare_data
  run_step bm25_negatives
  if has_train_data; then
    run_step build_train
    run_step tokenize_train_queries
  else
    skip_step build_train "no training qrels in $DATA_DIR (an evaluation-only data set)"
    skip_step tokenize_train_queries "no training qrels in $DATA_DIR"
  fi
  run_step tokenize_dev_queries
  run_step tokenize_passages
  CURRENT_STEP=summary
  elapsed=$(( $(now_ms) - total_start ))
  echo "==> all steps complete in $DATA_DIR:"
  for entry in "${STEP_TIMES[@]}"; do echo "    $entry"; done
  printf '    total %d.%03ds\n' $((elapsed / 1000)) $((elapsed % 1000))
}

main "$@"
