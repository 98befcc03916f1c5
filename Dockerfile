# The gateway image: slim Python, a non-root user, health checked on /healthz.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY gateway ./gateway
RUN pip install --no-cache-dir --prefix=/install .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 GATEWAY_HOST=0.0.0.0 GATEWAY_ADMIN_HOST=0.0.0.0
COPY --from=build /install /usr/local
RUN useradd --system --uid 10001 --no-create-home gateway \
    && mkdir -p /etc/gateway /var/lib/gateway \
    && chown gateway /var/lib/gateway
COPY config/gateway.yaml /etc/gateway/gateway.yaml
COPY config/baselines /etc/gateway/baselines
USER gateway
WORKDIR /var/lib/gateway
EXPOSE 8080 8081
# Liveness only (readiness is /readyz for the orchestrator); python is in the image, curl is not.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD python -c "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2).status != 200)"
STOPSIGNAL SIGTERM
ENTRYPOINT ["gateway"]
CMD ["serve", "--config", "/etc/gateway/gateway.yaml"]
