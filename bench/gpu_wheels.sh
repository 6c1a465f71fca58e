#!/usr/bin/env bash
# Download, on this machine, the wheels bench/gpu_check.sh needs on the lent GPU machine, whose image has torch,
# numpy, scipy, matplotlib, safetensors, pillow, jinja2, httpx, pytest but not the service's database and settings
# stack (/work/.library/device/KINDS.md lists what it has). Python 3.12, x86-64, the versions of our .venv.
#
#   bench/gpu_wheels.sh            # -> .whl/ (ignored by git through .git/info/exclude; pass it in `carry`)
set -euo pipefail
cd "$(dirname "$0")/.."
PIP=${PIP:-.venv/bin/python -m pip}
DEST=${DEST:-.whl}
if [ "$DEST" = .whl ]; then
  exclude="$(git rev-parse --git-common-dir)/info/exclude"
  grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
fi
mkdir -p "$DEST"
# name==version as installed here (pip freeze), so that the GPU run imports what the tests here import
PACKAGES="pydantic pydantic_core pydantic-settings annotated-types typing-inspection python-dotenv fastapi starlette
  SQLAlchemy greenlet alembic Mako python-multipart opentelemetry-api typing_extensions"
for name in $PACKAGES; do
  pin=$($PIP show "$name" 2>/dev/null | awk '/^Version:/{print $2}')
  [ -n "$pin" ] || { echo "gpu_wheels: $name is not installed in the venv" >&2; exit 2; }
  $PIP download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "$name==$pin"
done
ls -la "$DEST"
du -sh "$DEST"
