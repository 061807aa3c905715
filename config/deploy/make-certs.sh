#!/usr/bin/env bash
# A private CA for a quicast tree, and a certificate for each node, with openssl.
#
#   config/deploy/make-certs.sh DIR origin-a.example origin-b.example mid-1.example edge-1.example
#
# makes DIR/ca.pem and DIR/ca.key (once: kept and reused when they exist) and, for each
# name, DIR/NAME.crt and DIR/NAME.key: ECDSA P-256, TLS server certificates for that DNS
# name (or IP address), signed by the CA, valid 397 days. Copy NAME.crt and NAME.key to that
# node (cert = ..., key = ...) and ca.pem to every relay and client (ca = ...). Keep ca.key
# off the nodes.
#
# Certificates from a public CA (Let's Encrypt through certbot, or any other) work the same:
# cert = the full chain, key = its key, and relays trust them with
# ca = "/etc/ssl/certs/ca-certificates.crt".
set -euo pipefail

if [ "$#" -lt 2 ]; then
  echo "usage: $0 DIR NAME [NAME...]" >&2
  exit 2
fi
dir=$1
shift
mkdir -p "$dir"
umask 077

if [ ! -f "$dir/ca.pem" ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/CN=quicast tree CA" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  chmod 644 "$dir/ca.pem"
  echo "made $dir/ca.pem (and ca.key: keep it off the nodes)"
fi

for name in "$@"; do
  if [[ $name =~ ^[0-9.]+$ || $name == *:* ]]; then
    san="IP:$name"
  else
    san="DNS:$name"
  fi
  ext=$(mktemp)
  printf 'subjectAltName=%s\nbasicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n' "$san" >"$ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$name" \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" \
    -CAcreateserial -days 397 -extfile "$ext" -out "$dir/$name.crt" 2>/dev/null
  rm -f "$ext" "$dir/$name.csr"
  chmod 644 "$dir/$name.crt"
  echo "made $dir/$name.crt and $dir/$name.key"
done
