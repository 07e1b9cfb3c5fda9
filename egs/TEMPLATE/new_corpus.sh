#!/usr/bin/env bash
# Make a recipe for your own corpus: egs/NAME with run.sh, db.sh, conf/ (import,
# protocols, baseline) and RESULTS.md, ready for `./run.sh` once db.sh points at
# the corpus. Walkthrough: docs/corpora.md ("Adding a corpus").
#   egs/TEMPLATE/new_corpus.sh NAME [--csv labels.csv | --pattern '{speaker}/{label}/{*}.wav'] [--folds N]
set -euo pipefail
usage() { sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-1}"; }
[ $# -ge 1 ] || usage
case "$1" in -h|--help) usage 0;; esac
name=$1; shift
source_line="csv: labels.csv"
split_line="fractions: {train: 0.8, dev: 0.1, test: 0.1}"
folds=
while [ $# -gt 0 ]; do
  case "$1" in
    --csv) source_line="csv: $2"; shift 2;;
    --pattern) source_line="pattern: \"$2\""; shift 2;;
    --folds) folds=$2; split_line="folds: $2"; shift 2;;
    *) echo "new_corpus.sh: unknown option $1" >&2; usage;;
  esac
done
if ! [[ $name =~ ^[a-z][a-z0-9_]*$ ]]; then
  echo "new_corpus.sh: NAME must be lower case letters, digits and '_' (it prefixes every id), got '$name'" >&2
  exit 1
fi
if [ -n "$folds" ] && ! [[ $folds =~ ^[0-9]+$ && $folds -ge 2 ]]; then
  echo "new_corpus.sh: --folds needs a number >= 2, got '$folds'" >&2; exit 1
fi
here=$(cd "$(dirname "$0")" && pwd)
egs=$(cd "$here/.." && pwd)  # logical path: a symlinked TEMPLATE makes recipes beside the link
dest=$egs/$name
if [ -e "$dest" ]; then echo "new_corpus.sh: $dest already exists; choose another NAME" >&2; exit 1; fi
var=$(echo "$name" | tr '[:lower:]' '[:upper:]')

mkdir -p "$dest/conf/splits"
for f in run.sh db.sh conf/import.yaml conf/egemaps_lr.yaml RESULTS.md; do
  sed -e "s|__NAME__|$name|g" -e "s|__VAR__|$var|g" -e "s|__SOURCE__|$source_line|" -e "s|__SPLIT__|$split_line|" \
    "$here/new_corpus/$f" > "$dest/$f"
done
chmod +x "$dest/run.sh"
{
  echo "# $name protocols. The split list is written by the first stage-1 run (seeded, by speaker;"
  echo "# folds are also stratified by label, with class counts printed per fold);"
  echo "# commit it, and pin its sha256 here as lists_sha256 so a changed split is refused."
  echo "corpus: $name"
  echo "label_map: labels.yaml"
  echo "protocols:"
  if [ -n "$folds" ]; then
    echo "  speaker_${folds}fold:"
    echo "    scheme: speaker-independent ${folds}-fold CV"
    echo "    lists: splits/${name}_speaker_split.txt"
    echo "    folds:"
    for k in $(seq 1 "$folds"); do echo "      - {train: fold${k}_train, test: [fold${k}_test]}"; done
  else
    echo "  speaker_split:"
    echo "    scheme: speaker-independent (80/10/10 of the speakers)"
    echo "    lists: splits/${name}_speaker_split.txt"
    echo "    train: train"
    echo "    dev: dev"
    echo "    test: [test]"
  fi
} > "$dest/conf/protocols.yaml"
echo "made $dest:"
(cd "$dest" && find . -type f | sort | sed 's/^/  /')
echo "next: set $var in $dest/db.sh, check conf/import.yaml, then: cd $dest && ./run.sh --stop-stage 1"
