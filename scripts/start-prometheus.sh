#!/bin/sh
# Run a Prometheus that scrapes ssesup apps and evaluates dashboards/alerts.yml: for trying the
# dashboard locally, and for the test suite (tests/test_dashboards.py). Needs no systemd: it writes its
# config into DATA_DIR and runs prometheus in the foreground (exec, so its pid is this script's).
#
#   scripts/start-prometheus.sh [-l 127.0.0.1:9090] [-d DATA_DIR] [-i 15s] TARGET [TARGET...]
#
# TARGET is host:port of an app that serves /metrics. The job is named "ssesup", as the alert rules
# expect. -i sets both the scrape and the rule evaluation interval.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
listen=127.0.0.1:9090
data_dir=
interval=15s
while getopts l:d:i: option; do
    case $option in
    l) listen=$OPTARG ;;
    d) data_dir=$OPTARG ;;
    i) interval=$OPTARG ;;
    *) echo "usage: $0 [-l LISTEN] [-d DATA_DIR] [-i INTERVAL] TARGET..." >&2; exit 2 ;;
    esac
done
shift $((OPTIND - 1))
if [ $# -eq 0 ]; then
    echo "usage: $0 [-l LISTEN] [-d DATA_DIR] [-i INTERVAL] TARGET..." >&2
    exit 2
fi
if ! command -v prometheus >/dev/null 2>&1; then
    echo "prometheus is not installed: run scripts/install-prometheus.sh" >&2
    exit 1
fi
[ -n "$data_dir" ] || data_dir=$(mktemp -d "${TMPDIR:-/tmp}/ssesup-prometheus.XXXXXX")
mkdir -p "$data_dir"

targets=
for target in "$@"; do
    targets="$targets\"$target\", "
done

cat >"$data_dir/prometheus.yml" <<CONFIG
global:
  scrape_interval: $interval
  scrape_timeout: $interval
  evaluation_interval: $interval
rule_files:
  - $here/dashboards/alerts.yml
scrape_configs:
  - job_name: ssesup
    metrics_path: /metrics
    static_configs:
      - targets: [${targets%, }]
CONFIG

echo "prometheus on http://$listen, config and data in $data_dir" >&2
exec prometheus \
    --config.file="$data_dir/prometheus.yml" \
    --storage.tsdb.path="$data_dir/tsdb" \
    --web.listen-address="$listen" \
    --log.level=warn
