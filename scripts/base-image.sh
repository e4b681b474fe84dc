#!/usr/bin/env bash
# The base image for deploy/Dockerfile, built from Debian packages when Docker Hub (and
# its python:3.11-slim) cannot be reached: bookworm's minimal system with its Python 3.11,
# from this machine's configured apt mirror, imported as a one-layer image.
#   scripts/base-image.sh [TAG]     (default voicesurvey-exports-base:bookworm)
# Does nothing when the image exists already (remove it to rebuild).
set -euo pipefail
tag=${1:-voicesurvey-exports-base:bookworm}

docker info >/dev/null 2>&1 || {
    echo "base image: no Docker daemon answers on ${DOCKER_HOST:-/var/run/docker.sock} (start dockerd)" >&2
    exit 1
}
if docker image inspect "$tag" >/dev/null 2>&1; then
    exit 0
fi
command -v debootstrap >/dev/null || {
    echo "base image: debootstrap is not installed (apt-get install debootstrap)" >&2
    exit 1
}

# The first Debian mirror the machine's apt sources name (deb822 or one-line format).
mirror=$(grep -hE '^\s*URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null \
    | awk '{print $2}' | grep -v security | head -n 1 || true)
if [ -z "$mirror" ]; then
    mirror=$(grep -hE '^\s*deb\s' /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
        | awk '{print $2}' | grep -v security | head -n 1 || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
echo "base image: debootstrap bookworm from $mirror (about a minute)"
# passwd: useradd for the image's non-root user, as python:3.11-slim has it.
if ! debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates,passwd \
    bookworm "$root" "$mirror" >"$root.log" 2>&1; then
    echo "base image: debootstrap from $mirror failed (no network to the Debian mirror?): last line: $(tail -n 1 "$root.log")" >&2
    exit 1
fi
rm -f "$root.log"
# apt's package lists and caches are not needed at run time.
rm -rf "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/*.bin "$root"/var/cache/apt/archives/*.deb
tar -C "$root" -c . | docker import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'CMD ["python3"]' \
    - "$tag" >/dev/null
echo "base image: $tag ($(docker run --rm --network none "$tag" python3 --version))"
