#!/usr/bin/env bash
# SciFact reranker, quick profile: train a cross-encoder from the packaged MiniLM on the stage-2 groups
# (mined hard negatives + BM25), rerank BM25 top-100 and stage-2 top-100 of the 300 test queries, evaluate.
# Re-run with another seed: SEED=7 msmarco-passage-ranking/scifact_rerank.sh
# Reads (never writes) $RUNS and $MARCO; every output goes under $OUT.  Each step skips when up to date.
set -euo pipefail
SEED=${SEED:-42}
RUNS=${RUNS:-runs/regression-scifact-quick}   # a finished run.sh --all (quick profile)
MARCO=${MARCO:-marco/scifact}
OUT=${OUT:-runs/scifact-rerank/seed$SEED}
LENGTHS="--q_max_len 32 --p_max_len 192"
MINILM=$(python -c "from tevatron.tokenization import packaged_minilm_dir; print(packaged_minilm_dir())")
mkdir -p "$OUT"
step() { local name=$1; shift; local start=$SECONDS; "$@"; echo "$name $((SECONDS - start))s" | tee -a "$OUT/step_times.log"; }

step train python -m tevatron.reranker.driver.train --model_name_or_path "$MINILM" --train_dir "$RUNS/train-hn" \
  --output_dir "$OUT/model" --train_n_passages 8 $LENGTHS --per_device_train_batch_size 8 \
  --learning_rate 3e-5 --num_train_epochs 1 --seed "$SEED" --logging_steps 20 --save_steps 50 --report_to none
for first in bm25:$MARCO/bm25.dev.rank.tsv stage2:$RUNS/ranking/stage2/dev.rank.tsv; do
  name=${first%%:*}; run=${first#*:}
  step "rerank_$name" python -m tevatron.reranker.driver.rerank --model_name_or_path "$OUT/model" --run "$run" \
    --queries "$MARCO/bert/query/dev.query.json" --corpus "$MARCO/bert/corpus/split*.json" --rerank_depth 100 \
    --rerank_output "$OUT/$name.reranked.tsv" --per_device_eval_batch_size 64 $LENGTHS
  python -m tevatron.evaluation "$MARCO/qrels.dev.tsv" "$OUT/$name.reranked.tsv" --json "$OUT/$name.reranked.metrics.json"
done
