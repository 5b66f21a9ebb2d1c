# egress-authz: `authz serve` in a small image. Build: docker build -t egress-authz:0.1.0 .
# Stage 1 installs the package and exactly the runtime dependencies in uv.lock (all wheels) into a venv,
# with uv pinned by hash; the final stage copies that venv alone: no uv, no caches, no compilers, no sources.
FROM python:3.11.10-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 UV_NO_CACHE=1 UV_PYTHON_DOWNLOADS=never \
    UV_PROJECT_ENVIRONMENT=/opt/egress-authz
WORKDIR /src
COPY requirements-uv.txt ./
RUN python -m pip install --require-hashes --no-deps -r requirements-uv.txt
COPY pyproject.toml uv.lock README.md ./
COPY authz ./authz
RUN uv sync --locked --no-editable --compile-bytecode --python /usr/local/bin/python3

FROM python:3.11.10-slim-bookworm
LABEL org.opencontainers.image.title="egress-authz" \
      org.opencontainers.image.description="Identity-aware egress authorization for Envoy and Istio egress gateways" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 authz \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin authz
COPY --from=build /opt/egress-authz /opt/egress-authz
COPY policies /etc/egress-authz/policies
ENV PATH=/opt/egress-authz/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
USER 10001:10001
EXPOSE 9191
# The gRPC health service answers SERVING once the policy is loaded (and not while draining). The
# healthcheck asks the plaintext health listener on 127.0.0.1 only, 9192 (--health-listen), which
# answers whether 9191 serves mTLS (--tls-cert: a healthcheck has no client certificate) or not: a
# command of your own should keep `--health-listen 127.0.0.1:9192`. Kubernetes ignores HEALTHCHECK
# (its probes: deploy/kubernetes).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["authz", "health", "--target", "127.0.0.1:9192"]
ENTRYPOINT ["authz"]
CMD ["serve", "--policy", "/etc/egress-authz/policies", "--listen", "0.0.0.0:9191", "--health-listen", "127.0.0.1:9192"]
