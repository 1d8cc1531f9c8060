# The alternative a user would write by hand, for bench/realnode_coldstart.py: transformers' own
# OpenAI-compatible server (`transformers serve`) in glowplug's worker image, plus the packages of
# transformers' `serving` extra (the lock's `baseline` group: fastapi, openai, ...).
# Build from the repository root (hack/images.sh bench does).
ARG WORKER_IMAGE=ghcr.io/glowplug/worker:0.1.0
FROM ${WORKER_IMAGE}
ARG UV_VERSION=0.13.9 UV_PYTHON_DOWNLOADS=never UV_LINK_MODE=copy \
    BUILD_CA=/etc/ssl/certs/ca-certificates.crt
USER root
COPY pyproject.toml uv.lock /src/baseline/
COPY operator/pyproject.toml /src/baseline/operator/
COPY worker/pyproject.toml /src/baseline/worker/
RUN --mount=type=cache,id=glowplug-uv-tool,target=/opt/uv \
    --mount=type=cache,id=glowplug-uv,target=/root/.cache/uv \
    export SSL_CERT_FILE=$BUILD_CA PIP_CERT=$BUILD_CA uv=/opt/uv/$UV_VERSION/bin/uv \
 && { [ -x "$uv" ] || { python3 -m venv /opt/uv/$UV_VERSION && /opt/uv/$UV_VERSION/bin/pip install -q "uv==$UV_VERSION"; }; } \
 && cd /src/baseline && $uv export --frozen --only-group baseline --no-emit-workspace -o /tmp/requirements.txt \
 && $uv pip install --python /opt/glowplug/bin/python --compile-bytecode --require-hashes -r /tmp/requirements.txt
USER 1000:1000
ENTRYPOINT ["transformers"]
CMD ["serve"]
