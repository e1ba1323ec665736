#!/usr/bin/env bash
# The nightly regression run: every hypothesis against a models registry, compared case by case
# with the promoted baseline. Exits non-zero when a verdict flipped (a regression) or any case
# failed; every night's report is kept in REPORTS_DIR/runs/<run-id>/, REPORTS_DIR/latest is the newest.
#
#   scripts/nightly.sh MODELS.yaml [REPORTS_DIR] [-- more pytest options, e.g. -n 4]
#
# Nothing promotes itself: after reviewing a night you trust,
#   .venv/bin/python -m reports promote REPORTS_DIR latest
set -uo pipefail
cd "$(dirname "$0")/.."
models=${1:?usage: scripts/nightly.sh MODELS.yaml [REPORTS_DIR] [-- pytest options]}
shift
reports=reports
if [ $# -gt 0 ] && [ "$1" != "--" ]; then reports=$1; shift; fi
if [ "${1:-}" = "--" ]; then shift; fi
baseline=()
if [ -e "$reports/baseline/verdicts.json" ]; then
  baseline=(--baseline=baseline)
else
  echo "nightly: no promoted baseline in $reports/baseline yet: this run is kept but compared with nothing"
  echo "nightly: promote a run you trust with: .venv/bin/python -m reports promote $reports latest"
fi
.venv/bin/python -m pytest -q --models="$models" --report-dir="$reports" "${baseline[@]}" "$@"
status=$?
echo "nightly: report in $reports/latest/verdict.html; exit status $status"
exit $status
