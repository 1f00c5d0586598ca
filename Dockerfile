# The logbroker image: gateways (`serve`) and the demo worker fleet (`demo`) in docker-compose.yml.
# `docker build -t logbroker .`; `docker run logbroker serve --redis-url redis://HOST:6379/0`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Only what the package needs (pyproject names README.md as its readme, LICENSE as its licence
# file); tests stay out. The gateway extra: the image runs `serve` and the demo fleet.
COPY pyproject.toml README.md LICENSE ./
COPY broker ./broker
COPY gateway ./gateway
RUN pip install '.[gateway]' && rm -rf /app/build

# Not root; /data for LOGBROKER_DATA_DIR should someone run `serve` without a Redis URL
# (that needs a redis-server binary the slim image does not have, so compose always sets one).
RUN useradd --system --uid 10001 --home-dir /data --create-home logbroker
USER logbroker
WORKDIR /data
ENV LOGBROKER_HOST=0.0.0.0 \
    LOGBROKER_PORT=8080 \
    LOGBROKER_DATA_DIR=/data
EXPOSE 8080

ENTRYPOINT ["logbroker"]
CMD ["serve"]
