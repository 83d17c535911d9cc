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

# start_mcpg CONFIG PORT [ARGS...]: starts mcpg with CONFIG (and ARGS, e.g. `--node-id`) and
# waits until PORT's /readyz answers 200; sets mcpg_pid. Its output goes to
# $work/<config name>-<PORT>.{out,err}.
start_mcpg() {
  local config=$1 port=$2 name
  shift 2
  name="$(basename "$config" .yaml)-$port"
  "$bin/mcpg" --config "$config" "$@" >"$work/$name.out" 2>"$work/$name.err" &
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

# start_nginx HOST:PORT: starts nginx (Debian's package; NGINX overrides the path) as a plain
# reverse proxy in front of HOST:PORT on a free port, and waits until it answers; sets
# nginx_port. Keep-alive connections to the target, HTTP/1.1 without `Connection: close`,
# nothing buffered, the target's own Host; one worker process per core (as mcpg runs one
# serving thread per core); no access log. The yardstick: an HTTP hop that does not
# understand the bytes.
start_nginx() {
  local target=$1 nginx=${NGINX:-/usr/sbin/nginx}
  if [[ ! -x $nginx ]]; then
    echo "nginx is missing: run tools/install-test-deps (apt-get install nginx-light)" >&2; exit 1
  fi
  nginx_port=$(free_port)
  local dir="$work/nginx-$nginx_port"
  mkdir -p "$dir"
  cat >"$dir/nginx.conf" <<EOF
daemon off;
worker_processes auto;
pid $dir/nginx.pid;
error_log $dir/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/body;
    proxy_temp_path $dir/proxy;
    fastcgi_temp_path $dir/fastcgi;
    uwsgi_temp_path $dir/uwsgi;
    scgi_temp_path $dir/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 120s;
    upstream target {
        server $target;
        keepalive 128;
        keepalive_requests 1000000;
        keepalive_timeout 120s;
    }
    server {
        listen 127.0.0.1:$nginx_port;
        location / {
            proxy_pass http://target;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $target;
            proxy_buffering off;
            proxy_request_buffering off;
        }
    }
}
EOF
  "$nginx" -p "$dir" -e "$dir/error.log" -c "$dir/nginx.conf" >"$dir/nginx.out" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do
    # Any HTTP answer from behind it means nginx is up and reaches the target.
    if [[ $(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$nginx_port/" || true) != 000 ]]; then
      return 0
    fi
    sleep 0.05
  done
  echo "nginx did not start:" >&2; cat "$dir/nginx.out" "$dir/error.log" >&2; exit 1
}
