# One image for the API and the workers. The torch build is chosen at build time:
#   docker build --build-arg TORCH_VARIANT=cpu   -t taming .     (default)
#   docker build --build-arg TORCH_VARIANT=cu124 -t taming:gpu .
FROM python:3.11-slim

ARG TORCH_VARIANT=cpu
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    TAMING_VAR_DIR=/data TAMING_HOST=0.0.0.0

RUN useradd --create-home --uid 10001 taming && mkdir -p /data /srv/taming && chown taming /data
WORKDIR /srv/taming

# torch first, from the index of the chosen variant, so that the project's own install does not pull another.
RUN pip install torch --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"
COPY pyproject.toml README.md ./
COPY taming taming
COPY app app
COPY worker worker
COPY console console
COPY migrations migrations
COPY alembic.ini ./
# Editable: alembic.ini and migrations/ stay beside the code, where app/migrate.py finds them.
RUN pip install -e .

USER taming
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=3s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2)" || exit 1
CMD ["taming", "serve"]
