# syntax=docker/dockerfile:1
# Kafka → Klaviyo relay. Two stages: the first resolves and builds every wheel (the relay's
# own, with its packaged Avro schemas) into a virtualenv; the second is the slim runtime with
# only that virtualenv, no compiler, no pip cache, running as an unprivileged user.
#
#   docker build -t klaviyo-relay .
#   docker run --rm -e KLAVIYO_API_KEY=... -e KAFKA_BOOTSTRAP_SERVERS=... klaviyo-relay

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# .dockerignore is an allow-list: pyproject, README, the package and the schemas only.
COPY . .
# The runtime venv gets no pip or setuptools of its own: the build stage's pip installs into it.
RUN pip wheel --no-cache-dir --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/venv \
    && pip --python /opt/venv/bin/python install --no-cache-dir --no-index \
        --find-links /wheels /wheels/klaviyo_relay-*.whl \
    && /opt/venv/bin/klaviyo-relay --version

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="klaviyo-relay" \
      org.opencontainers.image.description="Kafka → Klaviyo transactional event relay" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    METRICS_PORT=9400
# A fixed numeric uid/gid so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 relay \
    && useradd --system --uid 10001 --gid relay --no-create-home --shell /usr/sbin/nologin relay
COPY --from=build /opt/venv /opt/venv
USER 10001:10001
WORKDIR /tmp
EXPOSE 9400
# The relay drains in-flight events and commits on SIGTERM (DRAIN_TIMEOUT_SECONDS); no
# HEALTHCHECK: Kubernetes probes /healthz and /readyz.
STOPSIGNAL SIGTERM
ENTRYPOINT ["klaviyo-relay"]
CMD ["run"]
