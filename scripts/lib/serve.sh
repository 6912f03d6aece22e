# Sourced by the bench scripts: one way to start the release `idtrail serve` they measure.
# Expects $bin (the binary) and $work (a scratch directory); sets $server to its pid.

# start_idtrail [SERVE ARGS…]: serves OTLP on 127.0.0.1:34317 (gRPC) and :34318 (HTTP, also
# /readyz and /metrics), data in $work/data, log in $work/serve.log; returns once ready.
start_idtrail() {
  "$bin" serve --data-dir "$work/data" --key-file "$work/fp.key" \
    --grpc-address 127.0.0.1:34317 --http-address 127.0.0.1:34318 \
    "$@" 2>"$work/serve.log" &
  server=$!
  for _ in $(seq 100); do
    curl -sf http://127.0.0.1:34318/readyz >/dev/null && return 0
    sleep 0.1
  done
  echo "idtrail serve did not become ready; its log: $work/serve.log" >&2
  return 1
}
