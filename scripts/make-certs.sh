#!/usr/bin/env bash
# Make a local CA and a server certificate signed by it, to try fulcrum over HTTPS in a minute.
# Usage: scripts/make-certs.sh [DIR] [NAME...]
#   DIR   where to write (default: certs); an existing ca.pem/ca.key there is reused
#   NAME  DNS names or IP addresses the certificate serves (default: localhost 127.0.0.1)
# Writes DIR/ca.pem (trust it: curl --cacert DIR/ca.pem), DIR/server.pem and DIR/server.key.
set -euo pipefail
dir="${1:-certs}"
shift || true
names=("$@")
if [[ ${#names[@]} -eq 0 ]]; then
  names=(localhost 127.0.0.1)
fi
command -v openssl >/dev/null || { echo "make-certs: openssl is required (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
umask 077

if [[ ! -f "$dir/ca.pem" || ! -f "$dir/ca.key" ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=fulcrum local CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    2>/dev/null
fi

san=""
for n in "${names[@]}"; do
  if [[ "$n" =~ ^[0-9.]+$ || "$n" == *:* ]]; then san+="IP:$n,"; else san+="DNS:$n,"; fi
done
ext=$(mktemp)
trap 'rm -f "$ext" "$dir/server.csr" "$dir/ca.srl"' EXIT
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' \
  "${san%,}" >"$ext"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=${names[0]}" \
  -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
  -days 90 -extfile "$ext" -out "$dir/server.pem" 2>/dev/null
chmod 644 "$dir/ca.pem" "$dir/server.pem"
echo "make-certs: $dir/server.pem (${names[*]}), its key $dir/server.key, signed by $dir/ca.pem"
