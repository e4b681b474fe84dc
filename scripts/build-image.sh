#!/usr/bin/env bash
# `make image`: the production image from deploy/Dockerfile, tagged
# voicesurvey-exports:<version in pyproject.toml> and voicesurvey-exports:latest.
#
# The host downloads what the image installs (the build itself needs no network): the
# runtime set as uv.lock pins it (`uv export --locked`, hashes checked by pip) as wheels for
# the image's platform and Python 3.11, and a wheel of this project, into
# .local/image/context/wheels. Downloads are kept while uv.lock is unchanged.
# BASE_IMAGE (default: a Debian bookworm base built here by scripts/base-image.sh, as
# Docker Hub's python:3.11-slim cannot be reached from every machine) is the Dockerfile's.
#   scripts/build-image.sh [UV]
set -euo pipefail
cd "$(dirname "$0")/.."
uv=${1:-.local/uv/bin/uv}
name=voicesurvey-exports
version=$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml | head -n 1)
base=${BASE_IMAGE:-$name-base:bookworm}
out=${IMAGE_BUILD_DIR:-.local/image}
context=$out/context

command -v docker >/dev/null || {
    echo "make image: the docker command is missing (apt-get install docker.io)" >&2
    exit 1
}
docker info >/dev/null 2>&1 || {
    echo "make image: no Docker daemon answers on ${DOCKER_HOST:-/var/run/docker.sock} (start dockerd, or install docker.io)" >&2
    exit 1
}
if [ -z "${BASE_IMAGE:-}" ]; then
    scripts/base-image.sh "$base"
fi

mkdir -p "$out"
lock_hash=$(cat uv.lock | sha256sum | cut -c1-16)
machine=$(uname -m)  # the image is built for this machine's architecture
if [ "$(cat "$out/wheels.lock" 2>/dev/null)" != "$lock_hash-$machine" ]; then
    echo "make image: downloading the runtime wheels (uv.lock $lock_hash, $machine)"
    rm -rf "$out/wheels" "$out/wheels.lock"
    "$uv" export --quiet --locked --no-dev --no-emit-project --format requirements-txt \
        -o "$out/requirements.txt"
    # Wheels only (no source builds), for CPython 3.11 on glibc 2.36 (bookworm, as
    # python:3.11-slim) and this architecture; pip checks each against uv.lock's hashes.
    # pip takes each manylinux level literally: name every one up to glibc 2.36.
    platforms=$(for minor in $(seq 36 -1 5); do printf -- '--platform manylinux_2_%s_%s ' "$minor" "$machine"; done; for old in 2014 2010 1; do printf -- '--platform manylinux%s_%s ' "$old" "$machine"; done)
    if ! python3 -m pip download --quiet --disable-pip-version-check --no-deps \
        --only-binary=:all: --implementation cp --python-version 3.11 --abi cp311 --abi abi3 \
        --abi none $platforms --platform any \
        --require-hashes -r "$out/requirements.txt" -d "$out/wheels.partial" 2>"$out/pip.log"; then
        echo "make image: downloading the runtime wheels failed (no network to the package index?): $(grep -m1 -E 'ERROR' "$out/pip.log" || tail -n 1 "$out/pip.log")" >&2
        exit 1
    fi
    mv "$out/wheels.partial" "$out/wheels"
    echo "$lock_hash-$machine" >"$out/wheels.lock"
fi

# The context: the locked wheels, this project's wheel (built afresh: the source may have
# changed without uv.lock), and the deploy files the Dockerfile copies.
rm -rf "$context"
mkdir -p "$context/wheels" "$context/project" "$context/deploy"
ln "$out"/wheels/*.whl "$context/wheels/" 2>/dev/null || cp "$out"/wheels/*.whl "$context/wheels/"
# From an sdist, so that the build leaves nothing in the checkout (build/, *.egg-info).
rm -rf "$out/dist"
"$uv" build --quiet --out-dir "$out/dist" . 2>"$out/build.log" && mv "$out"/dist/*.whl "$context/project/" && rm -rf "$out/dist" || {
    echo "make image: building the project's wheel failed: $(tail -n 1 "$out/build.log")" >&2
    exit 1
}
cp deploy/dagster-*.yaml deploy/workspace.yaml "$context/deploy/"

# DOCKER_BUILD_FLAGS: e.g. --no-cache (the benchmark's cold build).
# Its output goes to a log (the legacy builder warns on every build); a failure shows the end.
if ! docker build ${DOCKER_BUILD_FLAGS:-} --build-arg "BASE_IMAGE=$base" -f deploy/Dockerfile \
    -t "$name:$version" -t "$name:latest" "$context" >"$out/docker-build.log" 2>&1; then
    tail -n 20 "$out/docker-build.log" >&2
    echo "make image: docker build failed (log: $out/docker-build.log)" >&2
    exit 1
fi
echo "make image: $name:$version ($name:latest), $(docker image inspect -f '{{.Size}}' "$name:latest" | awk '{printf "%.0f MB", $1/1e6}')"
