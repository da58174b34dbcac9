#!/usr/bin/env bash
# HTTP API conformance: runs schemathesis against the hub's own OpenAPI document
# (/api/openapi.json) on a hub seeded with a few endpoints, every check on, a fixed seed and a
# bounded number of examples per operation. See docs/CONFORMANCE.md for the results.
#
#   tests/external/schemathesis.sh
#   MAX_EXAMPLES=50 SEED=7 tests/external/schemathesis.sh
#   SKIP_BUILD=1 tests/external/schemathesis.sh     # use target/release/flowhub as it is
#   tests/external/schemathesis.sh --continue-on-failure   # more arguments go to schemathesis
#
# Exit status: schemathesis's (0 when no check failed). Its reports (JUnit XML, NDJSON
# events) are kept in the run directory it prints.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=${WORK:-$ROOT/target/conformance}
SEED=${SEED:-20261127}
MAX_EXAMPLES=${MAX_EXAMPLES:-30}
ST_VERSION=${ST_VERSION:-4.32.5}
mkdir -p "$WORK"

# --- schemathesis from PyPI, in a venv under $WORK -----------------------------------------
VENV=$WORK/st-venv
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$ST_VERSION"; then
  echo "== installing schemathesis $ST_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$ST_VERSION"
fi

# --- the hub, in open mode, seeded over HTTP ----------------------------------------------
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release --bin flowhub
fi
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RUN=$(mktemp -d "$WORK/st-run.XXXXXX")
FLOWHUB_AUTH=none FLOWHUB_LISTEN=127.0.0.1:$PORT FLOWHUB_DATA_DIR=$RUN/data \
  FLOWHUB_DURABILITY=memory FLOWHUB_LOG=warn \
  "$ROOT/target/release/flowhub" serve >"$RUN/hub.log" 2>&1 &
HUB=$!
trap 'kill $HUB 2>/dev/null || true; wait $HUB 2>/dev/null || true' EXIT
BASE=http://127.0.0.1:$PORT
for _ in $(seq 100); do
  curl -fs "$BASE/health" >/dev/null && break
  sleep 0.1
done

create() { # path, JSON data
  curl -fsS -X POST "$BASE$1" --header 'Flow-Request-Method: CREATE' --data "$2" >/dev/null
}
echo "== seeding $BASE"
create /api/address/address/address/ '{"id": "b93aefc2-0bc7-4f87-a5ab-08c66326cee3", "streetName": "Larss Gata", "streetNumber": 6, "streetLitteral": "G", "postalCode": "12431", "city": "Envik"}'
create /api/address/address/address/ '{"id": "1", "streetName": "Övre Åkerallén", "streetNumber": 4, "postalCode": "39927", "city": "Götefred"}'
create /api/inventory/inventory/device/ '{"id": "dev-1", "name": "5128v1.3 (Core-MGNT-switch)", "site": "Envik", "ports": [1, 2, 3]}'
create /api/inventory/inventory/device/ '{"id": "dev-2", "name": "edge", "site": "Götefred", "tags": {"rack": "B2"}}'
create /api/scheduler/scheduler/queue/ '{"id": "q", "jobs": []}'
create /api/scheduler/scheduler/queue/ '{"name": "nightly", "priority": 3}'

# --- schemathesis ----------------------------------------------------------------------------
# Three checks are left out, each for a documented behaviour of the bridge that OpenAPI cannot
# express (docs/CONFORMANCE.md):
# - not_a_server_error: RUN on an endpoint no provider serves answers NO_PROVIDER with 503, as
#   SPEC section 8 says; the method is a header value, not an operation, so it cannot be left
#   out alone. A real server error is an INTERNAL reply, which the hub logs: the log is
#   checked for those (and for panics) below.
# - positive_data_acceptance: the object id may come in the path, a header or the query
#   string, and parameters have a grammar of their own; generated "valid" requests the hub
#   rightly refuses with 400.
# - negative_data_rejection: a header wins over its query-string twin, so a bad twin next to a
#   good header is never read and the call succeeds.
EXCLUDED=${EXCLUDED:-not_a_server_error,positive_data_acceptance,negative_data_rejection}
echo "== schemathesis $ST_VERSION run $BASE/api/openapi.json --checks all --exclude-checks $EXCLUDED --seed $SEED --max-examples $MAX_EXAMPLES"
status=0
# From the run directory, where schemathesis keeps its own state (.schemathesis/).
(cd "$RUN" && "$VENV/bin/schemathesis" run "$BASE/api/openapi.json" \
  --checks all --exclude-checks "$EXCLUDED" --seed "$SEED" --max-examples "$MAX_EXAMPLES" \
  --workers 1 --request-timeout 10 --suppress-health-check all \
  --report junit,ndjson --report-dir "$RUN/report" "$@") || status=$?
if grep -E -q 'panicked|INTERNAL|"status":500' "$RUN/hub.log"; then
  echo "the hub logged a panic or an INTERNAL error:" >&2
  grep -E 'panicked|INTERNAL' "$RUN/hub.log" | head -20 >&2
  status=1
fi
echo "reports: $RUN/report"
exit $status
