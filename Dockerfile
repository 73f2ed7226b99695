FROM python:3.11-slim
# neonize (the WhatsApp client) loads libmagic when it is imported; the slim image lacks it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends libmagic1 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY zenthor ./zenthor
COPY bench ./bench
COPY config ./config
RUN pip install --no-cache-dir .
# WhatsApp: the session file of local auth mode and the inbound spool live in WHATSAPP_AUTH_DIR, an
# absolute path outside the code so a volume can be mounted on it (docker-compose.yml does).
RUN install -d -m 0700 /var/lib/zenthor/whatsapp
ENV PYTHONUNBUFFERED=1 LOG_FORMAT=json WHATSAPP_AUTH_DIR=/var/lib/zenthor/whatsapp
CMD ["zenthor", "worker"]
