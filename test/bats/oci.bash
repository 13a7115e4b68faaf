# Shared by oci.bats and bench/oci.sh (sourced): Debian's docker-registry (the
# CNCF distribution registry) on loopback, with htpasswd auth and a
# self-signed TLS certificate made here.
#
# start_registry DIR [tls|http]: a registry with its storage, certificate and
# htpasswd (user pim, password $REG_PASS) in DIR; sets REG (127.0.0.1:PORT)
# and REG_PID. stop_registry DIR ends it (kill_registry DIR: with SIGKILL).
REG_USER=pim
REG_PASS=s3cret-pass

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

start_registry() {
  local dir=$1 mode=${2:-tls} port
  mkdir -p "$dir/storage"
  if [ ! -f "$dir/htpasswd" ]; then
    # bcrypt cost 4: the registry checks the password on every request
    htpasswd -B -C 4 -b -c "$dir/htpasswd" "$REG_USER" "$REG_PASS" 2>/dev/null
  fi
  if [ "$mode" = tls ] && [ ! -f "$dir/cert.pem" ]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=127.0.0.1 \
      -addext subjectAltName=IP:127.0.0.1 -keyout "$dir/key.pem" -out "$dir/cert.pem" 2>/dev/null
  fi
  port=${REG_PORT:-$(free_port)}
  {
    echo "version: 0.1"
    echo "log: {level: info, accesslog: {disabled: false}}"
    echo "storage: {filesystem: {rootdirectory: $dir/storage}, delete: {enabled: true}, maintenance: {uploadpurging: {enabled: false}}}"
    echo "auth: {htpasswd: {realm: pim-test, path: $dir/htpasswd}}"
    if [ "$mode" = tls ]; then
      echo "http: {addr: 127.0.0.1:$port, tls: {certificate: $dir/cert.pem, key: $dir/key.pem}}"
    else
      echo "http: {addr: 127.0.0.1:$port}"
    fi
  } >"$dir/config.yml"
  setsid docker-registry serve "$dir/config.yml" >>"$dir/registry.log" 2>&1 </dev/null 3>&- &
  REG_PID=$!
  disown "$REG_PID" 2>/dev/null || true
  echo "$REG_PID" >"$dir/pid"
  REG="127.0.0.1:$port"
  echo "$REG" >"$dir/addr"
  # ready when it answers (401: auth is on)
  local i
  for i in $(seq 200); do
    curl -sk -o /dev/null -w '%{http_code}' "$( [ "$mode" = tls ] && echo https || echo http )://$REG/v2/" 2>/dev/null | grep -q 401 && return 0
    kill -0 "$REG_PID" 2>/dev/null || { cat "$dir/registry.log" >&2; return 1; }
    sleep 0.05
  done
  echo "the registry did not answer" >&2
  return 1
}

stop_registry() {
  local dir=$1
  [ -f "$dir/pid" ] && kill "$(cat "$dir/pid")" 2>/dev/null
  rm -f "$dir/pid"
  return 0
}

kill_registry() {
  local dir=$1
  [ -f "$dir/pid" ] && kill -9 "$(cat "$dir/pid")" 2>/dev/null
  rm -f "$dir/pid"
  return 0
}

# skopeo as the second opinion, against the loopback registry
skopeo_() { skopeo "$@" --tls-verify=false --creds "$REG_USER:$REG_PASS"; }
