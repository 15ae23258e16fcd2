#!/usr/bin/env bash
# make_test_pki.sh DIR: a throwaway CA, a server certificate for 127.0.0.1/localhost and a client
# certificate (P-256, 2 days), as the C++ e2e tests' TestPki makes them, for the client tests of
# every language: DIR/ca.pem, server.pem, server.key, client.pem, client.key.
set -euo pipefail
dir="$1"
mkdir -p "$dir"
cnf="$dir/openssl.cnf"
cat > "$cnf" <<'CNF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca_ext]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
[server_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, DNS:localhost
[client_ext]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
CNF
req() { openssl req -config "$cnf" -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "$@" 2>/dev/null; }
sign() {
  openssl x509 -req -in "$dir/$1.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -set_serial "$3" \
    -days 2 -extfile "$cnf" -extensions "$2" -out "$dir/$1.pem" 2>/dev/null
}
req -x509 -days 2 -subj "/CN=verdictd client test CA" -extensions ca_ext \
  -keyout "$dir/ca.key" -out "$dir/ca.pem"
req -subj "/CN=localhost" -keyout "$dir/server.key" -out "$dir/server.csr"
sign server server_ext 2
req -subj "/CN=client-test" -keyout "$dir/client.key" -out "$dir/client.csr"
sign client client_ext 3
chmod 600 "$dir"/*.key
