#!/usr/bin/env bash
# End-to-end test of TLS, mutual TLS and the two roles (docs/operations.md, "Tokens and roles")
# with real processes on loopback and certificates made here by openssl:
#   1. TLS: the right CA is accepted; plaintext and a wrong CA are refused;
#   2. separate tokens: the client token lists and submits, the worker token is refused for
#      client RPCs (PERMISSION_DENIED, "needs the client role"; exit 3 for list, an RPC that
#      failed, and 2 for submit, a request refused), and a worker with the client token is
#      refused;
#   3. mutual TLS: the CLI connects with a client certificate (--tls-cert/--tls-key) and no token
#      when the coordinator lists its identity as a client; a worker certificate cannot act as a
#      client; a worker whose certificate is a listed worker identity registers with no token and
#      runs a job that a certificate-only client submitted; a client certificate cannot register
#      as a worker.
#   4. the Python client (python/, pip-installed here): TLS with the client token, mutual TLS
#      with alice's certificate and no token, node-1's certificate refused as a client
#      (PERMISSION_DENIED), a missing client certificate refused (UNAVAILABLE).
# Usage: tls_roles_e2e_test.sh BIN_DIR [PYTHON]   (BIN_DIR holding moec, moec-coordinator,
# moec-worker; PYTHON with grpcio and grpcio-tools, default python3)
set -euo pipefail
BIN=$1
PYTHON=${2:-python3}
SRC=$(cd "$(dirname "$0")/../.." && pwd)
MOEC=$BIN/client/moec
COORD=$BIN/coordinator/moec-coordinator
WORKER=$BIN/worker/moec-worker
WORK=$(mktemp -d /tmp/moec_tls_e2e.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]:-}"; do kill -9 "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v openssl > /dev/null || { echo "SKIP: no openssl"; exit 77; }
cd "$WORK"

# A CA, the coordinator's certificate for 127.0.0.1, client certificates "alice" and "node-1",
# and a second CA that signed nothing here.
ca() {
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=$1" -keyout "$1.key" -out "$1.pem" \
    2> /dev/null
}
leaf() {  # NAME CA [SAN]
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$1" -keyout "$1.key" -out "$1.csr" 2> /dev/null
  printf 'basicConstraints=CA:FALSE\n%s\n' "${3:-}" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days 2 \
    -extfile "$1.ext" -out "$1.pem" 2> /dev/null
}
ca moec-ca
ca other-ca
leaf server moec-ca "subjectAltName=IP:127.0.0.1"
leaf alice moec-ca
leaf node-1 moec-ca
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > client.tok
head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > worker.tok
mkdir m && echo '{"num_hidden_layers": 2}' > m/config.json
cat > job.yaml <<'Y'
name: tls-job
model: m
output: out
stages:
  - {id: a, kind: noop, with: {sleep_ms: 10}}
Y

# Starts a coordinator with the given flags; sets PORT.
start_coordinator() {
  local dir=$1
  shift
  "$COORD" --listen 127.0.0.1:0 --data-dir "$WORK/$dir" --tls-cert server.pem --tls-key server.key \
    "$@" > "$dir.out" 2> "$dir.log" &
  PIDS+=($!)
  PORT=""
  for _ in $(seq 100); do grep -q "listening on port" "$dir.out" 2> /dev/null && break; sleep 0.1; done
  PORT=$(sed -n 's/listening on port //p' "$dir.out")
  [ -n "$PORT" ] || { cat "$dir.log"; fail "coordinator $dir did not start"; }
}
# Runs `moec ARGS...` expecting exit code EXPECTED and, when given, TEXT in its stderr.
expect() {  # EXPECTED TEXT ARGS...
  local want=$1 text=$2
  shift 2
  local rc=0
  timeout 30 "$MOEC" "$@" > cmd.out 2> cmd.err || rc=$?
  [ "$rc" -eq "$want" ] || fail "moec $* exited $rc, expected $want: $(cat cmd.err)"
  [ -z "$text" ] || grep -q "$text" cmd.err || fail "moec $*: no '$text' in: $(cat cmd.err)"
}

echo "== 1. TLS, separate tokens"
start_coordinator c1 --client-token-file client.tok --worker-token-file worker.tok
A=127.0.0.1:$PORT
A1=$A
expect 0 "" list --coordinator "$A" --token-file client.tok --tls-ca moec-ca.pem
expect 3 "" list --coordinator "$A" --token-file client.tok
expect 3 "" list --coordinator "$A" --token-file client.tok --tls-ca other-ca.pem

echo "== 2. roles by token"
expect 3 "needs the client role" list --coordinator "$A" --token-file worker.tok --tls-ca moec-ca.pem
expect 2 "needs the client role" submit job.yaml --coordinator "$A" --token-file worker.tok --tls-ca moec-ca.pem
expect 0 "" submit job.yaml --coordinator "$A" --token-file client.tok --tls-ca moec-ca.pem
# A worker holding the client token is refused at registration and says why.
"$WORKER" --coordinator "$A" --token-file client.tok --tls-ca moec-ca.pem --name wrong-role \
  > w-wrong.out 2> w-wrong.log &
WPID=$!
PIDS+=($WPID)
for _ in $(seq 100); do grep -q "needs the worker role" w-wrong.log && break; sleep 0.1; done
grep -q "needs the worker role" w-wrong.log || fail "a worker with the client token: $(tail -5 w-wrong.log)"
kill -9 "$WPID" 2> /dev/null || true
expect 0 "" workers --coordinator "$A" --token-file client.tok --tls-ca moec-ca.pem --json
grep -q "wrong-role" cmd.out && fail "a worker with the client token was registered"

echo "== 3. mutual TLS, certificates for roles"
start_coordinator c2 --client-token-file client.tok --worker-token-file worker.tok \
  --tls-client-ca moec-ca.pem --tls-client-identities alice --tls-worker-identities node-1
A=127.0.0.1:$PORT
ALICE=(--coordinator "$A" --tls-ca moec-ca.pem --tls-cert alice.pem --tls-key alice.key)
NODE=(--coordinator "$A" --tls-ca moec-ca.pem --tls-cert node-1.pem --tls-key node-1.key)
expect 0 "" list "${ALICE[@]}"
expect 3 "needs the client role" list "${NODE[@]}"
# Without a client certificate the handshake itself fails.
expect 3 "" list --coordinator "$A" --token-file client.tok --tls-ca moec-ca.pem
# A token adds its role to a certificate's.
expect 0 "" list "${NODE[@]}" --token-file client.tok
"$WORKER" "${NODE[@]}" --name cert-worker > w1.out 2> w1.log &
PIDS+=($!)
expect 0 "" submit job.yaml "${ALICE[@]}" --watch
grep -q "JOB_SUCCEEDED" cmd.out || fail "the job did not succeed: $(tail -5 cmd.out)"
expect 0 "" workers "${ALICE[@]}" --json
grep -q "cert-worker" cmd.out || fail "the certificate worker is not listed"
"$WORKER" --coordinator "$A" --tls-ca moec-ca.pem --tls-cert alice.pem --tls-key alice.key \
  --name alice-worker > w2.out 2> w2.log &
WPID=$!
PIDS+=($WPID)
for _ in $(seq 100); do grep -q "needs the worker role" w2.log && break; sleep 0.1; done
grep -q "needs the worker role" w2.log || fail "a client certificate as a worker: $(tail -5 w2.log)"

echo "== 4. the Python client over TLS and mutual TLS"
# From a copy: pip builds in the source tree, and other tests install it at the same time.
mkdir -p "$WORK/src" && cp -r "$SRC/python" "$SRC/proto" "$WORK/src/" && rm -rf "$WORK/src/python/build"
"$PYTHON" -m pip install --quiet --no-build-isolation --no-deps --disable-pip-version-check \
  --target "$WORK/py" "$WORK/src/python" || fail "pip install of the Python client"
PYTHONPATH="$WORK/py" "$PYTHON" - "$A1" "$A" <<'PY' || fail "the Python client under TLS"
import sys
import moec
tls, mtls = sys.argv[1], sys.argv[2]
names = [j.name for j in moec.Client(tls, tls_ca="moec-ca.pem", token_file="client.tok").list()]
assert "tls-job" in names, names
alice = moec.Client(mtls, tls_ca="moec-ca.pem", tls_cert="alice.pem", tls_key="alice.key")
assert [j.state for j in alice.list()] == ["succeeded"], alice.list()
for client, code in [
        (moec.Client(mtls, tls_ca="moec-ca.pem", tls_cert="node-1.pem", tls_key="node-1.key"),
         "PERMISSION_DENIED"),
        (moec.Client(mtls, tls_ca="moec-ca.pem", token_file="client.tok", timeout=5), "UNAVAILABLE"),
        (moec.Client(tls, tls_ca="other-ca.pem", token_file="client.tok", timeout=5), "UNAVAILABLE")]:
    try:
        client.list()
        raise SystemExit("listed with credentials that should be refused (%s)" % code)
    except moec.MoecError as e:
        assert e.code.name == code, (e.code.name, code, e.message)
print("python client: TLS, mutual TLS and refusals as expected")
PY
echo "PASS"
