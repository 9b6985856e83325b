# proxyindex: one index URL for private packages and a cached PyPI.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md config.toml ./
COPY proxyindex ./proxyindex
COPY config.toml /etc/proxyindex/config.toml
# The s3 extra: the image is what replicas on object storage run (storage.backend = "s3").
RUN pip install '.[s3]' \
    && useradd --system --uid 10001 --home-dir /data proxyindex \
    && mkdir -p /data/packages /data/cache /etc/proxyindex \
    && chown -R proxyindex /data

# Defaults for the container; a mounted /etc/proxyindex/config.toml or PROXYINDEX_* variables
# override them (variables win over the file).
ENV PROXYINDEX_SERVER_HOST=0.0.0.0 \
    PROXYINDEX_SERVER_PORT=8080 \
    PROXYINDEX_STORAGE_PACKAGES_DIR=/data/packages \
    PROXYINDEX_STORAGE_CACHE_DIR=/data/cache

USER proxyindex
VOLUME ["/data"]
EXPOSE 8080
# No proxy for the health check: HTTP_PROXY set for the upstream must not take 127.0.0.1.
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.build_opener(u.ProxyHandler({})).open('http://127.0.0.1:%s/health' % os.environ.get('PROXYINDEX_SERVER_PORT', '8080'), timeout=4)"]

ENTRYPOINT ["proxyindex", "serve", "--config", "/etc/proxyindex/config.toml"]
