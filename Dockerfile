# application-grid-wrapper image: the wrapper, and (`application-grid-wrapper publish-topology`) the
# cluster's node topology publisher.
#
# Multi-arch build (needs buildx and, off-arch, QEMU binfmt):
#   docker buildx build --platform linux/amd64,linux/arm64 \
#     -t ghcr.io/edge/application-grid-wrapper:0.1.0 --push .
# Local single-arch build:
#   docker build -t ghcr.io/edge/application-grid-wrapper:0.1.0 .
#
# Both stages use the same pinned base: Python 3.11, the version the tests run on (CI checks that
# the two agree; wrapper/heap.py tunes CPython's garbage collector, which changes between versions). Every dependency ships manylinux wheels for amd64 and
# arm64, so no compiler is needed anywhere; --only-binary makes a missing wheel fail the build
# instead of silently requiring one.

# ---- stage 1: build the project wheel and collect dependency wheels ----
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY wrapper/ wrapper/
COPY publisher/ publisher/
COPY cache/ cache/
COPY filters/ filters/
COPY kubeapi/ kubeapi/
COPY apisim/ apisim/
RUN pip wheel --only-binary=:all: --wheel-dir /wheels .

# ---- stage 2: runtime ----
FROM python:3.11.14-slim-bookworm
# MALLOC_ARENA_MAX=2: the event loop is one thread; the resolver's and the snapshot writer's
# short-lived threads would otherwise each get a malloc arena of their own, kept for the process's life.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    MALLOC_ARENA_MAX=2
# Install from the wheels only (no index); pip itself is removed afterwards so the image has
# no installer. Bytecode is compiled at install time, so nothing is written at run time and the
# root filesystem can be mounted read-only.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels application-grid-wrapper \
    && pip uninstall -y pip \
    && mkdir -p /var/lib/application-grid-wrapper \
    && chown 65532:65532 /var/lib/application-grid-wrapper
# The only writable path the wrapper needs (--cache-dir); mount a volume there in Kubernetes.
VOLUME ["/var/lib/application-grid-wrapper"]
USER 65532:65532
# Main port (kube-proxy talks to it) and the debug port; both bind 127.0.0.1 by default.
EXPOSE 51006 51007
ENTRYPOINT ["application-grid-wrapper"]
