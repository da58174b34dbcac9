#!/usr/bin/env bash
# WebSocket conformance: runs the Autobahn|Testsuite fuzzing client (wstest -m fuzzingclient)
# against the hub's WebSocket stack and summarizes the report by behaviour. See
# docs/CONFORMANCE.md for what it tests, why it uses the conformance echo path, and the results.
#
#   tests/external/autobahn.sh            # all cases but 12.x and 13.x (permessage-deflate)
#   CASES='1.*,2.*' tests/external/autobahn.sh
#   SKIP_BUILD=1 tests/external/autobahn.sh   # use target/release/flowhub as it is
#
# Exit status 0 when every case run is OK, NON-STRICT or INFORMATIONAL; 1 otherwise.
#
# autobahntestsuite (PyPI) runs on Python 2.7 only. Debian 12 no longer ships Python 2, so
# the script takes Debian 11's python2.7 packages with apt-get, in a private apt state under
# $WORK (the system's apt sources and installed packages are not touched), unpacks them there
# with dpkg -x, and installs autobahntestsuite from PyPI with that interpreter's pip.
# Everything it installs stays in $WORK (default target/conformance), reused on the next run.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
WORK=${WORK:-$ROOT/target/conformance}
CASES=${CASES:-*}
EXCLUDE=${EXCLUDE-12.*,13.*}
# /ws-echo: the conformance echo path; WS_PATH=/ws runs the cases against the call socket.
WS_PATH=${WS_PATH:-/ws-echo}
mkdir -p "$WORK"

# --- Python 2.7 from Debian 11 (bullseye), unpacked under $WORK/py27 -----------------------
PY27=$WORK/py27
APTDIR=$WORK/apt
if [ ! -x "$PY27/usr/bin/python2.7" ]; then
  echo "== fetching Debian 11's python2.7 into $PY27"
  mkdir -p "$APTDIR/lists/partial" "$APTDIR/cache/archives/partial" "$APTDIR/debs"
  cat >"$APTDIR/sources.list" <<'EOF'
deb http://deb.debian.org/debian bullseye main
deb http://deb.debian.org/debian-security bullseye-security main
EOF
  APT_OPTS=(-o "Dir::Etc::SourceList=$APTDIR/sources.list" -o Dir::Etc::SourceParts=/dev/null
    -o "Dir::State::Lists=$APTDIR/lists" -o "Dir::Cache=$APTDIR/cache"
    -o Dir::State::status=/dev/null -o APT::Sandbox::User=root)
  apt-get "${APT_OPTS[@]}" update -qq
  (cd "$APTDIR/debs" && apt-get "${APT_OPTS[@]}" download -qq \
    python2.7 python2.7-minimal libpython2.7-minimal libpython2.7-stdlib libpython2.7 \
    python2.7-dev libpython2.7-dev libssl1.1 libffi7)
  mkdir -p "$PY27"
  for deb in "$APTDIR"/debs/*.deb; do dpkg -x "$deb" "$PY27"; done
fi

# --- autobahntestsuite from PyPI, under $WORK/ab27 ----------------------------------------
AB=$WORK/ab27
# Python 2.7 with its libraries and packages; nothing else in this script sees them.
py2() {
  LD_LIBRARY_PATH=$PY27/usr/lib/x86_64-linux-gnu PYTHONPATH=$AB/lib/python2.7/site-packages \
    "$PY27/usr/bin/python2.7" "$@"
}
AB_VERSION=25.10.1
# The site directory is added as such (not only put on the path) for zope's namespace .pth.
installed() { py2 -c 'import site, sys; site.addsitedir(sys.argv[1]); import autobahntestsuite.wstest' \
  "$AB/lib/python2.7/site-packages" >/dev/null 2>&1; }
if ! installed; then
  echo "== installing autobahntestsuite $AB_VERSION into $AB"
  # pip 20.3.4 is the last pip for Python 2.7; it installs itself from its own wheel.
  python3 -m pip download -q --no-deps --python-version 2.7 --only-binary=:all: \
    -d "$WORK/wheels" pip==20.3.4
  py2 "$WORK/wheels/pip-20.3.4-py2.py3-none-any.whl/pip" install -q --disable-pip-version-check \
    --no-warn-script-location --prefix "$AB" "$WORK/wheels/pip-20.3.4-py2.py3-none-any.whl" 2>&1 |
    grep -v DEPRECATION || true
  PIP=(py2 -m pip install -q --disable-pip-version-check --no-warn-script-location --prefix "$AB")
  "${PIP[@]}" setuptools==44.1.1 wheel==0.37.1 2>&1 | grep -v DEPRECATION || true
  # Its C extensions (wsaccel, ujson, twisted) build against the unpacked headers.
  CFLAGS="-I$PY27/usr/include/python2.7 -I$PY27/usr/include" \
    "${PIP[@]}" "autobahntestsuite==$AB_VERSION" 2>&1 | grep -v DEPRECATION || true
  installed || { echo "autobahntestsuite did not install" >&2; exit 2; }
fi
WSTEST=(py2 -c 'import site, sys; site.addsitedir(sys.argv.pop(1)); sys.argv[0] = "wstest"
from autobahntestsuite.wstest import run; run()' "$AB/lib/python2.7/site-packages")

# --- the hub, in open mode, with the conformance echo path --------------------------------
if [ -z "${SKIP_BUILD:-}" ]; then
  cargo build --release --bin flowhub
fi
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
RUN=$(mktemp -d "$WORK/run.XXXXXX")
# Autobahn's 9.x cases send messages of up to 16 MiB and expect them back: the hub's hard
# limit (4 x max_frame_bytes) must let them through, so this run raises max_frame_bytes.
FLOWHUB_AUTH=none FLOWHUB_LISTEN=127.0.0.1:$PORT FLOWHUB_DATA_DIR=$RUN/data \
  FLOWHUB_DURABILITY=memory FLOWHUB_WS_ECHO_PATH=/ws-echo FLOWHUB_LOG=warn \
  FLOWHUB_MAX_FRAME_BYTES=$((16 << 20)) \
  "$ROOT/target/release/flowhub" serve >"$RUN/hub.log" 2>&1 &
HUB=$!
trap 'kill $HUB 2>/dev/null || true; wait $HUB 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  curl -fs "http://127.0.0.1:$PORT/health" >/dev/null && break
  sleep 0.1
done

# --- the fuzzing client -------------------------------------------------------------------
json_list() { python3 -c 'import json, sys; print(json.dumps([c for c in sys.argv[1].split(",") if c]))' "$1"; }
cat >"$RUN/fuzzingclient.json" <<EOF
{
  "outdir": "$RUN/report",
  "servers": [{"agent": "flowhub", "url": "ws://127.0.0.1:$PORT$WS_PATH"}],
  "cases": $(json_list "$CASES"),
  "exclude-cases": $(json_list "$EXCLUDE"),
  "exclude-agent-cases": {}
}
EOF
echo "== wstest -m fuzzingclient against ws://127.0.0.1:$PORT$WS_PATH (cases $CASES, excluded $EXCLUDE)"
(cd "$RUN" && "${WSTEST[@]}" -m fuzzingclient -s fuzzingclient.json >"$RUN/wstest.log" 2>&1) || {
  tail -20 "$RUN/wstest.log"
  exit 2
}

# --- the summary --------------------------------------------------------------------------
status=0
python3 - "$RUN/report/index.json" <<'EOF' || status=$?
import collections, json, sys
report = json.load(open(sys.argv[1]))["flowhub"]
counts = collections.Counter()
close = collections.Counter()
bad = []
GOOD = ("OK", "NON-STRICT", "INFORMATIONAL")
def key(case):
    return [int(p) for p in case.split(".")]
for case in sorted(report, key=key):
    r = report[case]
    counts[r["behavior"]] += 1
    close[r["behaviorClose"]] += 1
    if r["behavior"] not in GOOD or r["behaviorClose"] not in GOOD:
        bad.append("%s %s (close: %s)" % (case, r["behavior"], r["behaviorClose"]))
order = ["OK", "NON-STRICT", "INFORMATIONAL", "FAILED", "UNIMPLEMENTED"]
print("cases run: %d" % sum(counts.values()))
def line(c):
    return ", ".join("%s %d" % (b, c[b]) for b in order + sorted(set(c) - set(order)))
print("behaviour: " + line(counts))
print("closing behaviour: " + line(close))
for b in bad:
    print("  " + b)
sys.exit(1 if bad else 0)
EOF
echo "report: $RUN/report/index.html"
exit $status
