# shareddb in a container: one node per container, its data in the volume /data.
#   docker build -t shareddb .
#   docker run -p 8080:8080 -v shareddb-data:/data shareddb
# Configure it with SHAREDDB_* environment variables (see the README's configuration table) or with
# `serve` flags after the image name. docker-compose.yml runs a two-node cluster, and
# tests/cluster/test_compose.py runs this file's command and health check against local processes.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /tmp/shareddb
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install . \
    && cd / && rm -rf /tmp/shareddb \
    && useradd --system --uid 10001 --user-group --home-dir /data --no-create-home shareddb \
    && mkdir /data \
    && chown shareddb:shareddb /data

# A named volume mounted here starts out owned by shareddb (Docker copies the directory's owner).
VOLUME /data
WORKDIR /data
USER shareddb

# Listen on every interface of the container; SHAREDDB_ADVERTISE tells the other nodes where it is.
ENV SHAREDDB_HOST=0.0.0.0 \
    SHAREDDB_PORT=8080 \
    SHAREDDB_DATA=/data
EXPOSE 8080

# The slim image has no curl: ask /health (never behind --token) with the standard library.
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('SHAREDDB_PORT', '8080') + '/health', timeout=4).close()"]

ENTRYPOINT ["shareddb"]
CMD ["serve"]
