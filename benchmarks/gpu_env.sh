# Source on a GPU machine without a package index: installs the wheels carried in .whl/ that the
# machine's python lacks (never replacing what it has), keeps NVLink multicast off and lets Python cache bytecode.
# Fill .whl/ where there is an index, for the GPU machine's python (3.12 on the H200 machines), e.g. for make run-all:
#   pip download papermill ipykernel ipywidgets nvtx --python-version 3.12 --only-binary=:all: \
#       --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 -d .whl
#   DS_BUILD_OPS=0 pip wheel deepspeed --no-deps --no-build-isolation -w .whl
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
# The image sets PYTHONDONTWRITEBYTECODE and ships no bytecode: every process would compile torch's, Lightning's and
# transformers' sources again (`import torch, lightning.fabric` 12-19 s against 8-8.5 s cached, docs/benchmarks.md).
unset PYTHONDONTWRITEBYTECODE
export PYTHONPYCACHEPREFIX=${PYTHONPYCACHEPREFIX:-/tmp/pycache}
have=$(python3 -m pip list --format=freeze 2>/dev/null | tr 'A-Z_' 'a-z-' | cut -d= -f1)
need=()
for w in .whl/*.whl; do
  name=$(basename "$w" | cut -d- -f1 | tr 'A-Z_' 'a-z-')
  grep -qx "$name" <<<"$have" || need+=("$w")
done
if [ ${#need[@]} -gt 0 ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "${need[@]}"
fi
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
echo "installed from .whl: ${#need[@]} wheels: $(for w in "${need[@]}"; do basename "$w" | cut -d- -f1; done | tr '\n' ' ')"
