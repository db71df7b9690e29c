#!/usr/bin/env bash
# Build a minimal Debian image without any registry: debootstrap a root file system from
# Debian's packages and `docker import` it. The stack's Dockerfiles take it as BASE_IMAGE
# (scripts/test_docker.sh does this); an existing image is reused unless REBUILD=1.
#
#   docker/make-base.sh [TAG]            # default bootleg-base:local (Debian bookworm, python3.11 via apt)
#   SUITE=bookworm MIRROR=http://deb.debian.org/debian REBUILD=1 docker/make-base.sh
# Certificate authorities this machine added locally (/usr/local/share/ca-certificates/*.crt, e.g.
# a TLS-inspecting proxy's in front of PyPI) are added to the image too, and pip/requests/curl
# are pointed at the system bundle; HOST_CA_CERTS=0 leaves them out.
set -euo pipefail
tag="${1:-bootleg-base:local}"
suite="${SUITE:-bookworm}"
mirror="${MIRROR:-http://deb.debian.org/debian}"
docker="${DOCKER:-docker}"

if [ -z "${REBUILD:-}" ] && "$docker" image inspect "$tag" >/dev/null 2>&1; then
  echo "base image $tag: cached ($("$docker" image inspect -f '{{.Created}}' "$tag"))"
  exit 0
fi
command -v debootstrap >/dev/null || { echo "error: debootstrap not found (apt-get install debootstrap)" >&2; exit 2; }

root="$(mktemp -d /var/tmp/bootleg-rootfs.XXXXXX)"
cleanup() {
  for m in proc sys dev/pts dev; do mountpoint -q "$root/$m" 2>/dev/null && umount -l "$root/$m" || true; done
  rm -rf --one-file-system "$root"
}
trap cleanup EXIT

echo "base image $tag: debootstrap $suite from $mirror"
debootstrap --variant=minbase --include=ca-certificates "$suite" "$root" "$mirror" >"$root.log" 2>&1 ||
  { tail -20 "$root.log" >&2; rm -f "$root.log"; exit 1; }
rm -f "$root.log"
cat >"$root/etc/apt/sources.list" <<SOURCES
deb $mirror $suite main
deb $mirror $suite-updates main
deb http://deb.debian.org/debian-security $suite-security main
SOURCES
extra_env=()
cas=(/usr/local/share/ca-certificates/*.crt)
if [ "${HOST_CA_CERTS:-1}" != 0 ] && [ -e "${cas[0]}" ]; then
  cp "${cas[@]}" "$root/usr/local/share/ca-certificates/"
  chroot "$root" update-ca-certificates >/dev/null
  bundle=/etc/ssl/certs/ca-certificates.crt
  extra_env=(-c "ENV PIP_CERT=$bundle" -c "ENV REQUESTS_CA_BUNDLE=$bundle" -c "ENV SSL_CERT_FILE=$bundle" -c "ENV CURL_CA_BUNDLE=$bundle")
  echo "base image $tag: added this machine's CA certificates: ${cas[*]##*/}"
fi
# what the official slim images also drop: package caches, docs and man pages
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
tar --numeric-owner --one-file-system -C "$root" -c . |
  "$docker" import \
    -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    -c 'ENV LANG=C.UTF-8' \
    "${extra_env[@]}" \
    -c 'CMD ["/bin/bash"]' \
    -m "debootstrap --variant=minbase $suite" - "$tag" >/dev/null
echo "base image $tag: built ($("$docker" image inspect -f '{{.Size}}' "$tag") bytes)"
