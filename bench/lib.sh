# Shared by the bench scripts that source it: temp dir and child cleanup, free ports, starting
# the fixture and an mcpg and waiting until they serve. Expects `bin` (the binaries' dir).
# shellcheck shell=bash

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status"; }

# start_fixture [ARGS...]: starts mcpg-fixture-upstream on a free port; sets fixture_url.
start_fixture() {
  "$bin/mcpg-fixture-upstream" --listen 127.0.0.1:0 "$@" >"$work/fixture.out" 2>"$work/fixture.err" &
  pids+=($!)
  fixture_url=
  for _ in $(seq 100); do
    fixture_url=$(sed -n 's/^listening on //p' "$work/fixture.out")
    [[ -n $fixture_url ]] && return 0
    sleep 0.05
  done
  echo "the fixture did not start:" >&2; cat "$work/fixture.err" >&2; exit 1
}

# start_mcpg CONFIG PORT: starts mcpg with CONFIG and waits until PORT's /readyz answers 200;
# sets mcpg_pid.
start_mcpg() {
  local config=$1 port=$2 name
  name=$(basename "$config" .yaml)
  "$bin/mcpg" --config "$config" >"$work/$name.out" 2>"$work/$name.err" &
  mcpg_pid=$!
  pids+=($mcpg_pid)
  for _ in $(seq 300); do
    kill -0 "$mcpg_pid" 2>/dev/null || break
    if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/readyz" || true) == 200 ]]; then
      return 0
    fi
    sleep 0.1
  done
  echo "mcpg did not become ready:" >&2; cat "$work/$name.err" >&2; exit 1
}
