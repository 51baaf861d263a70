#!/usr/bin/env bash
# Interleaved rounds: each round runs every setting once (bench --repeats 3), so a change in the
# machine's load touches all settings alike.
cd "$(dirname "$0")/.."
for round in 1 2 3 4; do
  for cfg in default train; do
    for setting in shipped auto 211 111; do
      case $setting in
        shipped) sets=();;
        auto) sets=(--set decode.concurrency=auto --set augment.concurrency=auto --set normalize.concurrency=auto);;
        211) sets=(--set decode.concurrency=2 --set augment.concurrency=1 --set normalize.concurrency=1);;
        111) sets=(--set decode.concurrency=1 --set augment.concurrency=1 --set normalize.concurrency=1);;
      esac
      v=$(build/millrace bench configs/$cfg.yaml --repeats 3 --warmup 1 "${sets[@]}" 2>&1 | grep -E '^bench' | sed 's/.*median \([0-9.]*\).*/\1/')
      echo "$round $cfg $setting $v"
    done
  done
done
