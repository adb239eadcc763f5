#!/usr/bin/env bash
# Makes a local certificate authority and a server certificate it signs, for tests and
# local TLS (amqps://): DIR/ca.pem (give it to clients: --amqp-ca-file), DIR/server.pem and
# DIR/server.key (give them to the server). The server certificate names localhost and
# 127.0.0.1, and any extra host names or addresses given after DIR. Never for production.
#   scripts/dev-tls.sh DIR [NAME...]
set -euo pipefail
dir=${1:?usage: scripts/dev-tls.sh DIR [NAME...]}
shift
mkdir -p "$dir"
san="DNS:localhost,IP:127.0.0.1"
for name in "$@"; do
  if [[ $name =~ ^[0-9.]+$ ]]; then san="$san,IP:$name"; else san="$san,DNS:$name"; fi
done
cd "$dir"
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=Castwork dev CA" \
  -keyout ca.key -out ca.pem 2>/dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
printf 'subjectAltName=%s\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' "$san" > server.ext
openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
  -extfile server.ext -out server.pem 2>/dev/null
rm -f server.csr server.ext ca.srl
chmod 644 ca.pem server.pem server.key
echo "dev-tls: $dir/ca.pem signs $dir/server.pem ($san)"
