FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY zenthor ./zenthor
COPY bench ./bench
COPY config ./config
RUN pip install --no-cache-dir .
ENV PYTHONUNBUFFERED=1 LOG_FORMAT=json
CMD ["dramatiq", "zenthor.actors"]
