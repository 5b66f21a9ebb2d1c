# egress-authz: `authz serve` in a small image. Build: docker build -t egress-authz:0.1.0 .
# Stage 1 installs the package and its dependencies (all wheels) into a venv;
# the final stage copies that venv alone: no pip cache, no compilers, no sources.
FROM python:3.11.10-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY authz ./authz
RUN python -m venv /opt/egress-authz \
    && /opt/egress-authz/bin/pip install --no-compile . \
    && /opt/egress-authz/bin/python -m compileall -q /opt/egress-authz/lib

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
