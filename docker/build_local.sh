#!/usr/bin/env bash
# Build and try the project's images with podman where Docker Hub is out of reach: the base image is
# made from Debian's own mirror (debootstrap), then docker/Dockerfile.cpu and docker/Dockerfile are
# built on it and run. Needs root, podman, runc and debootstrap (apt-get install podman runc debootstrap).
#
#   bash docker/build_local.sh            # base (once), CPU image, its checks, GPU image, its checks
#   STEPS="cpu" bash docker/build_local.sh
#
# What differs from a build on the real base (python:3.12-slim-trixie): the local base is Debian
# bookworm's own Python 3.11 in a virtual environment first on PATH, passed as the BASE build
# argument; bookworm because its Python matches the CPU torch wheel this machine keeps on disk
# (TORCH_WHEELS). Everything after FROM is the same Dockerfile.
set -euo pipefail
cd "$(dirname "$0")/.."

SUITE=${SUITE:-bookworm}
ROOT=${ROOT:-/var/tmp/mfvc-${SUITE}-root}
BASE=${BASE:-localhost/mfvc-base:${SUITE}}
STEPS=${STEPS:-"base cpu gpu"}
# apt's own mirror (the first deb URI of its sources), unless MIRROR is given
MIRROR=${MIRROR:-$(grep -hoE '^URIs: *[^ ]+' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1 | awk '{print $2}')}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
# the CPU torch wheel this machine's pip configuration points to (pip config list: find-links)
TORCH_WHEELS=${TORCH_WHEELS:-$(pip config list 2>/dev/null | sed -n "s/^global.find-links='\(.*\)'/\1/p" | head -1)}

# crun refuses this kernel's hybrid cgroups (runc); the default ulimits are refused; the registry's
# certificate chain verifies against the host's CA bundle only.
PODMAN=(podman --runtime runc)
FLAGS=(--ulimit nofile=1024:1024 --ulimit nproc=4096:4096 --network host
       -v /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro)
BUILD=("${PODMAN[@]}" build --pull=never --format docker "${FLAGS[@]}" --build-arg "BASE=${BASE}")
RUN=("${PODMAN[@]}" run --rm "${FLAGS[@]}")

stamp() { echo "== $(date -u +%H:%M:%S) $*"; }
timed() { local t0=$SECONDS; "$@"; echo "   (${1##*/} ... took $((SECONDS - t0)) s)"; }

if [[ " $STEPS " == *" base "* ]] && ! podman image exists "$BASE"; then
  stamp "base: debootstrap $SUITE from $MIRROR into $ROOT"
  [ -x "$ROOT/usr/bin/python3" ] || timed debootstrap --variant=minbase \
      --include=python3,python3-venv,ca-certificates "$SUITE" "$ROOT" "$MIRROR" >/dev/null
  tar -C "$ROOT" -c . | podman import - "localhost/mfvc-${SUITE}-root" >/dev/null
  printf 'FROM localhost/mfvc-%s-root\nRUN python3 -m venv /opt/python && /opt/python/bin/pip install -q --upgrade pip\nENV PATH=/opt/python/bin:$PATH\n' \
      "$SUITE" | timed "${PODMAN[@]}" build --pull=never --format docker "${FLAGS[@]}" -t "$BASE" -f - .
fi

if [[ " $STEPS " == *" cpu "* ]]; then
  stamp "cpu image"
  timed "${BUILD[@]}" -v "${TORCH_WHEELS}:/wheels:ro" --build-arg TORCH_WHEELS=/wheels \
      -t localhost/mfvc-gpu:cpu -f docker/Dockerfile.cpu .
  podman image inspect localhost/mfvc-gpu:cpu --format 'size {{.Size}} bytes'
  stamp "cpu image: the README's main job on digits"
  timed "${RUN[@]}" localhost/mfvc-gpu:cpu cluster --dataset digits --out /tmp/run --no-progress
  stamp "cpu image: the test suite"
  timed "${RUN[@]}" --entrypoint python localhost/mfvc-gpu:cpu -m pytest -q -p no:cacheprovider \
      /home/mfvc/mfvc_gpu/tests
fi

if [[ " $STEPS " == *" gpu "* ]]; then
  stamp "gpu image"
  timed "${BUILD[@]}" -t localhost/mfvc-gpu:gpu -f docker/Dockerfile .
  podman image inspect localhost/mfvc-gpu:gpu --format 'size {{.Size}} bytes'
  stamp "gpu image: --version and the rapids_api tier (no GPU: up to the first device call)"
  timed "${RUN[@]}" localhost/mfvc-gpu:gpu --version
  timed "${RUN[@]}" --entrypoint python localhost/mfvc-gpu:gpu -m pytest -q -p no:cacheprovider -m rapids_api \
      /home/mfvc/mfvc_gpu/tests/test_rapids_api.py
fi
stamp done
