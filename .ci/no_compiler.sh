#!/usr/bin/env bash
# The field install on a machine without a compiler: a fresh venv, every compiler on PATH replaced by
# one that fails, CC/CXX=false, no pip cache (a cached hnswlib wheel would hide a compile). Then the
# README's main job and a build-index + match on a slice of real BOLD barcodes, with exact search.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
mkdir "$WORK/nocc"
for tool in cc gcc g++ c++ clang clang++ cpp ld x86_64-linux-gnu-gcc x86_64-linux-gnu-g++; do
  printf '#!/bin/sh\necho "no compiler on this machine ($0)" >&2\nexit 1\n' > "$WORK/nocc/$tool"
  chmod +x "$WORK/nocc/$tool"
done
export PATH="$WORK/nocc:$PATH" CC=false CXX=false PIP_NO_CACHE_DIR=1
python3 -m venv "$WORK/venv"
. "$WORK/venv/bin/activate"
python -m pip install -q --upgrade pip
# The guard is real: hnswlib (source only) cannot be installed here.
if pip install -q hnswlib >/dev/null 2>&1; then echo "no_compiler: hnswlib compiled, so the guard failed" >&2; exit 1; fi
(cd "$ROOT" && pip install -q -e .)   # the README's field install, word for word
python -c "import hnswlib" 2>/dev/null && { echo "no_compiler: hnswlib is installed" >&2; exit 1; }
cd "$WORK"
clibd match "$ROOT/examples/queries.fasta" --index "$ROOT/examples/reference.fasta" > calls.csv
test "$(wc -l < calls.csv)" -eq 41
DATA="$ROOT/../shared/data/bold_insect_coi_dev.tsv.gz"
if [ -f "$DATA" ]; then
  python - "$DATA" <<'EOF'
import gzip, sys
with gzip.open(sys.argv[1], "rt") as src, open("ref.tsv", "w") as ref, open("queries.tsv", "w") as queries:
    header = src.readline()
    ref.write(header)
    queries.write(header)
    for i, line in enumerate(src):
        if i >= 6000:
            break
        (queries if i % 10 == 0 else ref).write(line)
EOF
  COLUMNS=200 clibd build-index --barcodes ref.tsv -o idx 2>&1 | tee build.log
  grep -q "search: exact" build.log
  clibd match queries.tsv --index idx -o calls.tsv 2>&1 | tail -1
  test "$(wc -l < calls.tsv)" -gt 500
else
  echo "no_compiler: $DATA absent, BOLD slice skipped"
fi
echo "no_compiler: ok"
