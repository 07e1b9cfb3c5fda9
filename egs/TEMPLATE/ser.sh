#!/usr/bin/env bash
# Shared SER stage script (the role of ESPnet's egs2/TEMPLATE/asr1/asr.sh).
# A recipe's run.sh sets its corpus options and calls this script; every stage
# is a thin call into the sertk library. A stage whose inputs, options and
# config are unchanged is skipped ("stage N up to date"); --redo true re-runs
# (and retrains from scratch: training stages get --fresh). What each stage's
# digest covers: docs/recipes.md ("When a stage runs again").
# --prepare-cmd and --pool-cmd run under bash with $python and $data set to
# --python and --data: write them as \$python and \$data in run.sh.
set -euo pipefail
log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (ser.sh:${BASH_LINENO[0]}) $*" >&2; }
help_message="Usage: $0 [options]   (run from egs/<corpus>/, usually through its run.sh)
Stages: 0 model zoo (mini_emo) | 1 data prep+validation | 2 features (eGeMAPS, concept tokens) | 3 SER training (SELM + baselines)
        4 SER evaluation | 5 ICL meta-training | 6 ICL evaluation | 7 teacher + distillation
        8 export + student evaluation | 9 ZS-Fuse | 10 concept tokens with generative ALMs | 11 report"

# ---- options ----
stage=0                   # first stage to run
stop_stage=11             # last stage to run
corpus=                   # corpus name (recorded in every result's protocol id)
prepare_cmd=              # stage 1 command that writes data dirs under \$data, run with \$python (write both escaped in run.sh)
corpus_root=              # stage 1: corpus folder(s) the preparation reads (db.sh); their file listing is a stage-1 input (repeat the option for several)
pool_cmd=                 # stage 0 command that writes the pre-training pool \$data/pretrain (mini_emo)
zoo_config=               # stage 0 zoo config (mini_emo: conf/zoo.yaml); real recipes name hub checkpoints
zoo=                      # mini_emo: where stage 0 saves the zoo (default zoo/; configs name zoo/<model>); a recipe
                          # without --zoo-config: the zoo whose models stand in, offline, for the hub checkpoints
                          # its configs name (e.g. --zoo ../mini_emo/zoo; docs/zoo.md "Offline runs")
protocols=conf/protocols.yaml  # train/dev/test sets (and folds) of each protocol
data=data                 # data dirs
dump=dump                 # features and caches
exp=exp                   # experiments and results
nj=2                      # parallel parts for data-parallel stages
config_jobs=1             # stages 3-10 (and the zoo): configs run at once; a config waits for the configs it names (exp/<tag>)
job_threads=1             # CPU threads of every job of stages 0 and 3-10, whatever --config-jobs is; recorded in results and run digests
backend=local             # job backend: local or slurm
slurm_opts=               # extra sbatch options for --backend slurm
sample_rate=16000         # rate audio is resampled to for features and models
token_scope=global        # concept-token thresholds: global or speaker
ser_configs=              # stage 3-4 model configs (SELM and baselines); an entry CONFIG@PROTOCOLS runs on that protocols file
icl_configs=              # stage 5-6 configs
distill_configs=          # stage 7-8 configs (teacher, students)
zsfuse_configs=           # stage 9 configs
token_configs=            # stage 10 configs
token_nj=1                # stage 10: parts each test set is cut into, one ALM process each (--backend local, or a
                          # Slurm array task each with --slurm-opts); the merged results are those of one job
compare_config=conf/compare.yaml  # stage 11: the paired comparisons to test (when the file exists; docs/metrics.md)
overrides=                # config overrides for stages 3-10, e.g. "train.epochs=2 train.lr=1e-4"
seeds=                    # stages 3-8: train and evaluate every config once per seed, e.g. 0,1,2 (into <split>/seed<N>/;
                          # overrides a config's seeds:); the report gives mean ± sd over seeds (docs/metrics.md)
redo=false                # true: run selected stages even when up to date
python=python3            # python interpreter with sertk installed
train_launcher=           # e.g. "torchrun --standalone --nproc_per_node=4": DDP training (stages 3, 5, 7)
# ---- end options ----

here=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")" && pwd)
root=$(cd "$here/../.." && pwd)
# --corpus-root may be given several times: gather each one before parse_options.sh keeps only the last
__roots=() __rest=()
while [ $# -gt 0 ]; do
  case $1 in
    --corpus-root|--corpus_root) __roots+=("${2-}"); shift; [ $# -eq 0 ] || shift ;;
    --corpus-root=*|--corpus_root=*) __roots+=("${1#*=}"); shift ;;
    *) __rest+=("$1"); shift ;;
  esac
done
set -- "${__rest[@]+"${__rest[@]}"}"
[ ${#__roots[@]} -eq 0 ] || corpus_root=$(printf '%s\n' "${__roots[@]}")
. "$root/utils/parse_options.sh"
case $job_threads in ''|*[!0-9]*|0*) log "--job-threads must be a positive integer, got '$job_threads'"; exit 1 ;; esac

sertk() { "$python" -m sertk.cli "$@"; }
if [ -n "$zoo_config" ]; then
  zoo=${zoo:-zoo}
elif [ -n "$zoo" ]; then
  [ -d "$zoo" ] || { log "--zoo $zoo: no such directory (build one: cd egs/mini_emo && ./run.sh --stage 0 --stop-stage 0)"; exit 1; }
  SERTK_ZOO=$(cd "$zoo" && pwd); export SERTK_ZOO
fi
# with_threads CMD...: CMD with the thread pools of its processes (OpenMP, MKL, OpenBLAS) sized to
# --job-threads from their start; the sertk entry points it runs also get --threads, which sets and records it
with_threads() { OMP_NUM_THREADS=$job_threads MKL_NUM_THREADS=$job_threads OPENBLAS_NUM_THREADS=$job_threads "$@"; }
set_args=()
for o in $overrides; do set_args+=(--set "$o"); done

# run_stage NUM NAME "INPUTS" "OUTPUTS" "OPTIONS" [STAGE-ARGS...] -- CMD...: skip when up to date.
# OPTIONS are this stage's own options (a change re-runs it, and only it); STAGE-ARGS go to
# `sertk stage`: --corpus-root=DIR (a listed input), --run-arg=WORD (appended to CMD, not part of
# the digest: --nj, --fresh).
run_stage() {
  local num=$1 name=$2 inputs=$3 outputs=$4 options=$5 extra=()
  shift 5
  while [ $# -gt 0 ] && [ "$1" != -- ]; do extra+=("$1"); shift; done
  shift
  # shellcheck disable=SC2086
  sertk stage --num "$num" --name "$name" --exp "$exp" --inputs $inputs --outputs $outputs \
    --options "$options" --redo "$redo" "${extra[@]+"${extra[@]}"}" -- "$@"
}
# corpus_roots: one --corpus-root=DIR per --corpus-root (a value that is no folder is split on spaces)
corpus_roots=()
while IFS= read -r r; do
  [ -n "$r" ] || continue
  if [ -d "$r" ]; then corpus_roots+=("--corpus-root=$r"); else for w in $r; do corpus_roots+=("--corpus-root=$w"); done; fi
done <<< "$corpus_root"
# a prepare/pool command writes where --data says only if it names \$data
check_uses_data() {
  case $2 in *'$data'*|*'${data}'*) return 0 ;; esac
  [ "$data" = data ] && return 0
  log "--data $data: $1 does not name \$data, so it cannot write there: write \\\$data in run.sh (docs/recipes.md)"
  exit 1
}
sets() { sertk protocols --protocols "$protocols" --list-sets; }
# An entry of a --*-configs list is CONFIG, run on --protocols, or CONFIG@PROTOCOLS_FILE, run on that file.
config_of() { echo "${1%%@*}"; }
protocols_of() { case $1 in *@*) echo "${1#*@}" ;; *) echo "$protocols" ;; esac; }
extra_protocols() {  # every other protocols file a CONFIG@PROTOCOLS entry names, once each
  local c
  for c in $ser_configs $icl_configs $distill_configs $zsfuse_configs $token_configs; do
    case $c in *@*) [ "${c#*@}" = "$protocols" ] || echo "${c#*@}" ;; esac
  done | awk '!seen[$0]++'
}

# offline (--zoo without a zoo config): every hub name the configs of the stages in range name has a
# stand-in, checked once before any stage runs; each stage substitutes it and records it in results.json
if [ -n "${SERTK_ZOO-}" ]; then
  run_configs_list=()
  for pair in "3 4 ser_configs" "5 6 icl_configs" "7 8 distill_configs" "9 9 zsfuse_configs" "10 10 token_configs"; do
    read -r first last var <<< "$pair"
    [ "$stage" -gt "$last" ] || [ "$stop_stage" -lt "$first" ] || run_configs_list+=(${!var})
  done
  log "offline: hub checkpoints resolve to the zoo models of $SERTK_ZOO that stand in for them"
  "$python" -m sertk.bin.stand_ins --zoo "$SERTK_ZOO" "${set_args[@]+"${set_args[@]}"}" \
    --configs "${run_configs_list[@]+"${run_configs_list[@]}"}" || exit 1
fi

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  if [ -z "$zoo_config" ]; then
    log "stage 0: no --zoo-config for this recipe (its configs name hub checkpoints), nothing to do"
  else
    log "stage 0: pre-training pool and model zoo ($zoo_config -> $zoo/)"
    [ -z "$pool_cmd" ] || { check_uses_data --pool-cmd "$pool_cmd"; env python="$python" data="$data" bash -c "$pool_cmd"; }  # skips itself when up to date
    # only the zoo models this run's configs name (and what those start from): an unused one costs nothing
    all_configs=$(for e in $ser_configs $icl_configs $distill_configs $zsfuse_configs $token_configs; do
                    config_of "$e"; done | awk '!seen[$0]++')
    # shellcheck disable=SC2086
    zoo_models=$("$python" -m sertk.bin.build_zoo --config "$zoo_config" --pool "$data/pretrain" --zoo "$zoo" \
                   --list --for-configs $all_configs) || { log "stage 0: cannot tell which zoo models the configs name (above)"; exit 1; }
    if [ -z "$zoo_models" ]; then
      log "stage 0: no config of this run names a zoo model, nothing to build"
    else
      log "stage 0: zoo models the configs name: $zoo_models"
      # shellcheck disable=SC2086
      with_threads run_stage 0 zoo "$zoo_config $data/pretrain $root/sertk/zoo" "$zoo" "models=$zoo_models" \
        --run-arg=--jobs --run-arg="$config_jobs" -- \
        "$python" -m sertk.bin.build_zoo --config "$zoo_config" --pool "$data/pretrain" --zoo "$zoo" \
          --threads "$job_threads" --only $zoo_models
    fi
  fi
fi

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  log "stage 1: data preparation and validation"
  [ -n "$prepare_cmd" ] || { log "set --prepare-cmd in run.sh"; exit 1; }
  check_uses_data --prepare-cmd "$prepare_cmd"
  # inputs: the recipe's conf/ and local/, and the listing of the corpus folder(s) it reads
  run_stage 1 data "conf local $protocols" "$data" "corpus=$corpus" "${corpus_roots[@]+"${corpus_roots[@]}"}" -- \
    env python="$python" data="$data" bash -c "$prepare_cmd"
  sertk protocols --protocols "$protocols" --data "$data" --validate
  # protocols files with a build: section (multi-corpus sets from sibling recipes, e.g. SELM's) are
  # built here; a sibling that is not prepared stops the run, naming it and the command that prepares
  # it, unless the run ends before the model stages (preparing this corpus as another's sibling)
  for p in $(extra_protocols); do
    [ -f "$p" ] || { log "no such protocols file: $p (named by a CONFIG@PROTOCOLS entry)"; exit 1; }
    ins=$("$python" -m sertk.bin.build_multicorpus --protocols "$p" --data "$data" --list-inputs) || {
      [ "$stop_stage" -lt 3 ] || exit 1
      log "stage 1: the sets of $p are not built (above); the model stages that use it need them"; continue; }
    if [ -n "$ins" ]; then
      log "stage 1: multi-corpus sets of $p"
      run_stage 1 "build_$(basename "$p" .yaml)" "$ins" \
        "$("$python" -m sertk.bin.build_multicorpus --protocols "$p" --data "$data" --list-outputs)" "corpus=$corpus" -- \
        "$python" -m sertk.bin.build_multicorpus --protocols "$p" --data "$data"
      sertk protocols --protocols "$p" --data "$data" --validate --no-audio   # siblings checked their audio
    else
      sertk protocols --protocols "$p" --data "$data" --validate
    fi
  done
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  log "stage 2: eGeMAPS functionals and concept tokens"
  set_list=$(sets | tr '\n' ' ')
  ins=""; outs=""
  for s in $set_list; do ins+=" $data/$s"; outs+=" $dump/egemaps/$s"; done
  if [ "$backend" = local ]; then  # one pool for every set: workers start once
    # shellcheck disable=SC2086
    run_stage 2 egemaps "$ins" "$(for o in $outs; do printf '%s/feats.scp ' "$o"; done)" "sample_rate=$sample_rate" \
      --run-arg=--nj --run-arg="$nj" -- \
      "$python" -m sertk.bin.extract_egemaps --data $ins --out $outs --sample-rate "$sample_rate"
  else
    for s in $set_list; do
      run_stage 2 "egemaps_$s" "$data/$s" "$dump/egemaps/$s/feats.scp" "sample_rate=$sample_rate" \
        --run-arg=--nj --run-arg="$nj" --run-arg=--backend --run-arg="$backend" \
        --run-arg=--slurm-opts --run-arg="$slurm_opts" -- \
        "$python" -m sertk.bin.extract_egemaps --data "$data/$s" --out "$dump/egemaps/$s" --sample-rate "$sample_rate"
    done
  fi
  run_stage 2 tokens "$protocols $dump/egemaps" "$dump/tokens" "token_scope=$token_scope" -- \
    "$python" -m sertk.bin.protocol_tokens --protocols "$protocols" --data "$data" \
      --feats "$dump/egemaps" --out "$dump/tokens" --scope "$token_scope"
fi

# named_exps CONFIG ACTION: the exp/<tag> dirs a config reads. Training reads none named in its
# top-level eval: block (e.g. eval.baseline, the model a relative gain is taken against).
named_exps() {
  awk -v train="$([ "$2" = train ] && echo 1)" '/^[^ #]/ { in_eval = ($0 ~ /^eval:/) } !(train && in_eval)' "$1" \
    | grep -oE 'exp/[A-Za-z0-9_.-]+' | sort -u || true
}

# run_one_config STAGE ACTION ENTRY: train or evaluate one config on every protocol of its protocols file.
run_one_config() {
  local num=$1 action=$2 entry=$3 c p tag launcher deps fresh=() seed_args=()
  launcher="$python"
  [ "$action" = train ] && [ -n "$train_launcher" ] && launcher=$train_launcher
  # --redo true retrains from scratch (the old run is moved aside, see docs/trainer.md)
  [ "$action" = train ] && [ "$redo" = true ] && fresh=(--run-arg=--fresh)
  # a lone config runs its splits (protocols, folds) split_jobs at a time; not under a DDP launcher
  [ "${split_jobs:-1}" -le 1 ] || { [ "$launcher" = "$python" ] && fresh+=(--run-arg=--split-jobs --run-arg="$split_jobs"); }
  # stage 10: --token-nj parts per test set (a run argument: no figure changes, so the stage digest does not hold it)
  if [ "$num" = 10 ] && [ "$token_nj" -gt 1 ]; then
    fresh+=(--run-arg=--set --run-arg="eval.nj=$token_nj" --run-arg=--set --run-arg="eval.backend=$backend")
    [ -z "$slurm_opts" ] || fresh+=(--run-arg=--set --run-arg="eval.slurm_opts=$slurm_opts")
  fi
  c=$(config_of "$entry"); p=$(protocols_of "$entry"); tag=$(basename "$c" .yaml)
  # --seeds: the training stages and their evaluations (zero-shot stages 9-10 train nothing seeded)
  [ -z "$seeds" ] || [ "$num" -gt 8 ] || seed_args=(--seeds "$seeds")
  if [ "$p" != "$protocols" ]; then  # multi-corpus sets: name unprepared sibling recipes, not a missing dir
    "$python" -m sertk.bin.build_multicorpus --protocols "$p" --data "$data" --list-inputs >/dev/null || return 1
  fi
  # models another config trained (e.g. a student's exp/teacher) are inputs too,
  # and at evaluation their results (e.g. eval.baseline: the relative gain)
  deps=$(for d in $(named_exps "$c" "$action"); do
           [ "$d" != "exp/$tag" ] || continue
           find "$d" -name best.safetensors -not -path '*/checkpoints/*' -not -path '*.old-[0-9]*' 2>/dev/null || true
           if [ "$action" = evaluate ]; then
             find "$d" -path '*/eval/*' -name results.json -not -path '*/fewshot/*' -not -path '*.old-[0-9]*' \
               2>/dev/null || true
           fi
         done | sort | tr '\n' ' ')
  # evaluation: this config's own trained runs (a retrained or newly finished model is evaluated again)
  if [ "$action" = evaluate ]; then
    deps+=" $({ find "$exp/$tag" -name run_digest.json -not -path '*.old-[0-9]*' 2>/dev/null || true; } | sort | tr '\n' ' ')"
  fi
  # zoo models a config names (or, offline, every stand-in it may resolve to): a rebuilt one re-runs the stage
  if [ -n "${SERTK_ZOO-}" ]; then
    deps+=$(printf ' %s' "$SERTK_ZOO"/*/zoo.json)
  elif [ -n "$zoo" ]; then
    deps+=$(for d in $(grep -oE "(^|[ {:])$zoo/[A-Za-z0-9_.-]+" "$c" | grep -oE "$zoo/[A-Za-z0-9_.-]+" | sort -u); do
              [ ! -f "$d/zoo.json" ] || printf ' %s' "$d/zoo.json"; done)
  fi
  run_stage "$num" "${action}_${tag}" "$c $p $data $dump/egemaps $deps" "$exp/$tag" \
    "corpus=$corpus sample_rate=$sample_rate overrides=$overrides${seed_args[*]:+ seeds=$seeds}${SERTK_ZOO:+ stand_ins=$SERTK_ZOO}" \
    "${fresh[@]+"${fresh[@]}"}" -- \
    $launcher -m sertk.bin.$action --config "$c" --protocols "$p" --data "$data" \
      --dump "$dump" --exp "$exp/$tag" --corpus "$corpus" --sample-rate "$sample_rate" --stage "$num" \
      --threads "$job_threads" "${seed_args[@]+"${seed_args[@]}"}" "${set_args[@]+"${set_args[@]}"}"
}

# run_configs STAGE ACTION CONFIGS: every config of the list, --config-jobs at a time, started in
# list order, each on --job-threads threads (how many run at once changes no figure). A config that
# reads exp/<tag> of an earlier config in the list (named_exps) starts after it ends (a student after
# its teacher); each job's lines carry its [tag]; a failure stops the stage once the running configs end.
run_configs() {
  local num=$1 action=$2 configs=$3 entry c p tag t rcdir failed=()
  for entry in $configs; do
    c=$(config_of "$entry"); p=$(protocols_of "$entry")
    [ -f "$c" ] || { log "stage $num: no such config $c"; exit 1; }
    [ -f "$p" ] || { log "stage $num: no such protocols file $p (in $entry)"; exit 1; }
  done
  if [ "$config_jobs" -le 1 ] || [ "$(wc -w <<< "$configs")" -le 1 ]; then
    # a lone config uses the --config-jobs slots for its splits instead (each split computes what it
    # computes alone, on --job-threads threads: no figure changes)
    split_jobs=$config_jobs
    for entry in $configs; do with_threads run_one_config "$num" "$action" "$entry"; done
    split_jobs=1
    return
  fi
  rcdir=$(mktemp -d); declare -A pid_of=()
  for entry in $configs; do
    c=$(config_of "$entry"); tag=$(basename "$c" .yaml)
    for t in $(named_exps "$c" "$action" | sed 's#^exp/##'); do
      [ -n "${pid_of[$t]-}" ] || continue
      while kill -0 "${pid_of[$t]}" 2>/dev/null; do wait -n 2>/dev/null || true; done
      [ "$(cat "$rcdir/$t" 2>/dev/null)" = 0 ] || { log "stage $num: $tag waits for $t, which failed"; wait; exit 1; }
    done
    while [ "$(jobs -rp | wc -l)" -ge "$config_jobs" ]; do wait -n 2>/dev/null || true; done
    ( set +e; with_threads run_one_config "$num" "$action" "$entry" > >(sed -u "s/^/[$tag] /" >&2) 2>&1
      echo $? > "$rcdir/$tag" ) &
    pid_of[$tag]=$!
  done
  wait
  for entry in $configs; do
    tag=$(basename "$(config_of "$entry")" .yaml)
    [ "$(cat "$rcdir/$tag" 2>/dev/null)" = 0 ] || failed+=("$tag")
  done
  rm -rf "$rcdir"
  [ ${#failed[@]} -eq 0 ] || { log "stage $num: failed: ${failed[*]} (see [tag] lines above and exp/<tag>/log)"; exit 1; }
}

for pair in "3 train ser_configs" "4 evaluate ser_configs" "5 train icl_configs" "6 evaluate icl_configs" \
            "7 train distill_configs" "8 evaluate distill_configs" "9 evaluate zsfuse_configs" \
            "10 evaluate token_configs"; do
  read -r num action var <<< "$pair"
  if [ "$stage" -le "$num" ] && [ "$stop_stage" -ge "$num" ]; then
    if [ -z "${!var}" ]; then
      log "stage $num: no --${var//_/-} set for this recipe, nothing to do"
    else
      log "stage $num: $action ${!var}"
      run_configs "$num" "$action" "${!var}"
    fi
  fi
done

if [ "$stage" -le 11 ] && [ "$stop_stage" -ge 11 ]; then
  log "stage 11: report"
  compare_args=()
  [ -f "$compare_config" ] && compare_args=(--compare "$compare_config")
  # --data/--conf: the test sets' speakers and label maps, for speaker-level pooled intervals and comparisons
  sertk report --exp "$exp" --out "$exp/RESULTS.md" --title "sertk results: ${corpus}" \
    --data "$data" --conf "$(dirname "$protocols")" ${zoo_config:+--zoo "$zoo"} "${compare_args[@]+"${compare_args[@]}"}"
fi
log "done (stages $stage-$stop_stage)"
