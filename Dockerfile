# One image for every component: `aiis worker`, `aiis projections`, `aiis gateway`.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine engine
COPY providers providers
COPY projections projections
COPY gateway gateway
RUN pip install . && useradd --system --uid 10001 aiis
USER aiis
ENTRYPOINT ["aiis"]
CMD ["--help"]
