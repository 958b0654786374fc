#!/bin/sh
# Writes deploy/container/secrets/: the cluster key, a TLS certificate for
# each host of compose.yaml (issued by this machine's local authority, so
# clients here trust them), and each member's configuration file.
# Needs `peerlink` on the PATH. Run it once; it refuses to overwrite.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
out="$here/secrets"
if [ -e "$out" ]; then
    echo "prepare.sh: $out exists; remove it to start over" >&2
    exit 1
fi
mkdir -m 700 "$out"
for host in rm r1 r2 r3; do
    # Routers are dialled by their host name inside the network and by
    # localhost from the machine running compose.
    peerlink cert --host "$host" --host localhost --out "$out/tls-$host"
done
# A fresh cluster key: 32 random bytes in hex, readable by the owner only.
(umask 077 && od -An -tx1 -N32 /dev/urandom | tr -d ' \n' > "$out/cluster.key")
cp "$out/tls-rm/ca.pem" "$out/ca.pem"
cat > "$out/rm.toml" <<TOML
listen = "0.0.0.0:8007"
data-dir = "/var/lib/peerlink/rm"
cluster-key = "/etc/peerlink/cluster.key"
tls-ca = "/etc/peerlink/tls-rm/ca.pem"
tls-cert = "/etc/peerlink/tls-rm/cert.pem"
tls-key = "/etc/peerlink/tls-rm/key.pem"
admin-listen = "0.0.0.0:9107"
TOML
port=8008
for id in r1 r2 r3; do
    cat > "$out/$id.toml" <<TOML
id = "$id"
listen = "0.0.0.0:8008"
advertise = "localhost:$port"
cluster-listen = "0.0.0.0:8009"
cluster-advertise = "$id:8009"
rm = "rm:8007"
data-dir = "/var/lib/peerlink/$id"
cluster-key = "/etc/peerlink/cluster.key"
tls-ca = "/etc/peerlink/tls-$id/ca.pem"
tls-cert = "/etc/peerlink/tls-$id/cert.pem"
tls-key = "/etc/peerlink/tls-$id/key.pem"
admin-listen = "0.0.0.0:9108"
TOML
    port=$((port + 10))
done
echo "prepare.sh: wrote $out"
