#!/usr/bin/env bash
# Fetch and preprocess the training/evaluation data into $DATA_DIR (MS MARCO layout: tevatron/preprocess/layout.py):
#   [fetch msmarco] -> prepare_data -> bm25_negatives (+ dev run) -> build_train
#   -> tokenize_queries (train, dev) -> tokenize_passages
# Every step skips outputs that are already complete, so an interrupted run can simply be restarted.
#
#   bash get_data.sh                                              # MS MARCO (RocketQA corpus with titles)
#   DATASET=scifact bash get_data.sh                              # a BEIR dataset, downloaded
#   DATASET=/path/to/scifact DATA_DIR=/tmp/scifact_marco bash get_data.sh   # a local copy (BEIR or MS MARCO)
set -Eeuo pipefail

DATASET=${DATASET:-msmarco}            # msmarco | a BEIR dataset name | a local folder (BEIR or MS MARCO layout)
DATA_DIR=${DATA_DIR:-marco}
TOKENIZER=${TOKENIZER:-bert-base-uncased}
TOKENIZED_DIR=${TOKENIZED_DIR:-$DATA_DIR/bert}
N_SPLITS=${N_SPLITS:-10}
N_SAMPLE=${N_SAMPLE:-30}
SEED=${SEED:-42}
Q_MAX_LEN=${Q_MAX_LEN:-32}
P_MAX_LEN=${P_MAX_LEN:-128}            # training passages (build_train)
CORPUS_MAX_LEN=${CORPUS_MAX_LEN:-$P_MAX_LEN}   # the corpus splits that are encoded
NUM_WORKERS=${NUM_WORKERS:-2}
BM25_THREADS=${BM25_THREADS:-$(nproc 2>/dev/null || echo 1)}
PYTHON=${PYTHON:-python}
CONNECT_TIMEOUT=${CONNECT_TIMEOUT:-10}
ROCKETQA_URL=${ROCKETQA_URL:-https://rocketqa.bj.bcebos.com/corpus/marco.tar.gz}
QRELS_TRAIN_URL=${QRELS_TRAIN_URL:-https://msmarco.blob.core.windows.net/msmarcoranking/qrels.train.tsv}

RAW_DIR=$DATA_DIR/download
# run_step (skip complete outputs, name and time each step, name the failing one), have_files, SCRIPTS
source "$(dirname "${BASH_SOURCE[0]}")/msmarco-passage-ranking/pipeline_common.sh"

never_done() { return 1; }   # directory outputs: the step itself compares the recorded parameters

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
    echo "error: cannot download $url (exit $status; offline?); set DATASET=/path/to/local/copy" \
         "(a folder in MS MARCO/RocketQA or BEIR layout)" >&2
    exit 1
  fi
  mv "$target.part" "$target"
}

# ----------------------------------------------------------------------------- steps
done_fetch_msmarco() { [[ -f $RAW_DIR/marco/.complete ]]; }
do_fetch_msmarco() {
  mkdir -p "$RAW_DIR"
  if [[ ! -f $RAW_DIR/marco/para.txt ]]; then
    [[ -f $RAW_DIR/marco.tar.gz ]] || download "$ROCKETQA_URL" "$RAW_DIR/marco.tar.gz"
    rm -rf "$RAW_DIR/.extract" && mkdir -p "$RAW_DIR/.extract"
    tar -xzf "$RAW_DIR/marco.tar.gz" -C "$RAW_DIR/.extract"
    rm -rf "$RAW_DIR/marco" && mv "$RAW_DIR/.extract/marco" "$RAW_DIR/marco" && rm -rf "$RAW_DIR/.extract"
    rm -f "$RAW_DIR/marco.tar.gz"
  fi
  # RocketQA's training qrels are replaced by the official ones, as in Tevatron.
  download "$QRELS_TRAIN_URL" "$RAW_DIR/marco/qrels.train.tsv"
  touch "$RAW_DIR/marco/.complete"
}

done_prepare_data() {
  have_files "$DATA_DIR/corpus.tsv" "$DATA_DIR/train.query.txt" "$DATA_DIR/qrels.train.tsv" \
             "$DATA_DIR/dev.query.txt" "$DATA_DIR/qrels.dev.tsv"
}
do_prepare_data() { "$PYTHON" "$SCRIPTS/prepare_data.py" --source "$SOURCE" --out "$DATA_DIR"; }

has_train() { have_files "$DATA_DIR/train.query.txt" "$DATA_DIR/qrels.train.tsv"; }

done_bm25_negatives() {
  have_files "$DATA_DIR/bm25.dev.rank.tsv" && { ! has_train || have_files "$DATA_DIR/train.negatives.tsv"; }
}
do_bm25_negatives() {
  local train_args=()
  has_train || train_args=(--no_negatives)
  "$PYTHON" "$SCRIPTS/bm25_negatives.py" --data_dir "$DATA_DIR" --dev_run "$DATA_DIR/bm25.dev.rank.tsv" \
    --threads "$BM25_THREADS" "${train_args[@]}"
}

done_build_train() { never_done; }
do_build_train() {
  "$PYTHON" "$SCRIPTS/build_train.py" --tokenizer_name "$TOKENIZER" \
    --negative_file "$DATA_DIR/train.negatives.tsv" --qrels "$DATA_DIR/qrels.train.tsv" \
    --queries "$DATA_DIR/train.query.txt" --collection "$DATA_DIR/corpus.tsv" --save_to "$TOKENIZED_DIR/train" \
    --n_sample "$N_SAMPLE" --seed "$SEED" --q_max_len "$Q_MAX_LEN" --p_max_len "$P_MAX_LEN"
}

done_tokenize_train_queries() { have_files "$TOKENIZED_DIR/query/train.query.json"; }
do_tokenize_train_queries() {
  "$PYTHON" "$SCRIPTS/tokenize_queries.py" --tokenizer_name "$TOKENIZER" --query_file "$DATA_DIR/train.query.txt" \
    --save_to "$TOKENIZED_DIR/query/train.query.json" --q_max_len "$Q_MAX_LEN"
}

done_tokenize_dev_queries() { have_files "$TOKENIZED_DIR/query/dev.query.json"; }
do_tokenize_dev_queries() {
  "$PYTHON" "$SCRIPTS/tokenize_queries.py" --tokenizer_name "$TOKENIZER" --query_file "$DATA_DIR/dev.query.txt" \
    --save_to "$TOKENIZED_DIR/query/dev.query.json" --q_max_len "$Q_MAX_LEN"
}

done_tokenize_passages() { never_done; }
do_tokenize_passages() {
  "$PYTHON" "$SCRIPTS/tokenize_passages.py" --tokenizer_name "$TOKENIZER" --file "$DATA_DIR/corpus.tsv" \
    --save_to "$TOKENIZED_DIR/corpus" --n_splits "$N_SPLITS" --p_max_len "$CORPUS_MAX_LEN" --num_workers "$NUM_WORKERS"
}

# ----------------------------------------------------------------------------- main
main() {
  local total_start
  total_start=$(now_ms)
  mkdir -p "$DATA_DIR"
  if [[ $DATASET == msmarco ]]; then
    run_step fetch_msmarco
    SOURCE=$RAW_DIR/marco
  else
    SOURCE=$DATASET          # a local folder, or a BEIR name that prepare_data downloads
  fi
  # Without a reachable hub every tokenizer load retries for ~40 s before using the packaged vocabulary.
  if [[ -z ${HF_HUB_OFFLINE:-} && ! -d $TOKENIZER ]] && command -v curl >/dev/null 2>&1 \
     && ! curl -fsI --connect-timeout 3 -o /dev/null https://huggingface.co >/dev/null 2>&1; then
    echo "note: huggingface.co unreachable; HF_HUB_OFFLINE=1 (bert-base-uncased falls back to the packaged vocab)"
    export HF_HUB_OFFLINE=1
  fi
  run_step prepare_data
  run_step bm25_negatives
  if has_train; then
    run_step build_train
    run_step tokenize_train_queries
  else
    echo "==> no training qrels in $DATA_DIR: build_train and tokenize_train_queries skipped"
  fi
  run_step tokenize_dev_queries
  run_step tokenize_passages
  CURRENT_STEP=summary
  local elapsed=$(( $(now_ms) - total_start )) entry
  echo "==> all steps complete in $DATA_DIR:"
  for entry in "${STEP_TIMES[@]}"; do echo "    $entry"; done
  printf '    total %d.%03ds\n' $((elapsed / 1000)) $((elapsed % 1000))
}

main "$@"
