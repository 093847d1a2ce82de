#!/bin/sh
# Writes the King James Bible (Debian's bible-kjv package, public domain)
# as plain text to data/kjv.txt: one verse per line, no verse numbers or
# book headings. Usage: scripts/prepare_kjv.sh [OUT]
set -eu
out=${1:-data/kjv.txt}
if ! command -v bible >/dev/null 2>&1; then
  echo "prepare_kjv: the 'bible' command is missing; install it with: sudo apt-get install bible-kjv" >&2
  exit 1
fi
mkdir -p "$(dirname "$out")"
tmp="$out.tmp.$$"
# bible -f prints one "Ge1:1 text" line per verse; drop the reference.
bible -f -l9999 "gen1:1-rev22:21" | sed -n 's/^[^ ]*[0-9]:[0-9][0-9]* //p' > "$tmp"
if [ "$(wc -c < "$tmp")" -lt 1000000 ]; then
  rm -f "$tmp"
  echo "prepare_kjv: the bible dump is unexpectedly short" >&2
  exit 1
fi
mv "$tmp" "$out"
echo "prepare_kjv: wrote $out ($(wc -c < "$out") bytes)"
