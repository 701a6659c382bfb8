#!/usr/bin/env bash
# The device machine's entry for issue 22 (bench/RESULTS.md, "GPU (H200): prepared run"):
#   bash bench/gpu_run.sh RESULTS_DIR [bench.gpu_run arguments]
# Installs the wheels carried in .whl/ (made by bench/gpu_pack.py; nothing is fetched) into a private
# folder, then runs python -m bench.gpu_run on the carried .tgs/ data with RESULTS_DIR as its --out and
# the run state in /tmp/gpu-run, the whole console teed into RESULTS_DIR/console.log.
set -o pipefail
results=${1:?usage: bash bench/gpu_run.sh RESULTS_DIR [bench.gpu_run arguments]}
shift
mkdir -p "$results"
cd "$(dirname "$0")/.." || exit 2
export PYTHONUNBUFFERED=1 NO_ALBUMENTATIONS_UPDATE=1
{
    date -u
    site=/tmp/gpu-run-site
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$site" .whl/*.whl || exit 3
        export PYTHONPATH="$site:$PWD"
    else
        export PYTHONPATH="$PWD"
    fi
    python3 -c "import albumentations, torch; print('albumentations', albumentations.__version__, '| torch', torch.__version__, '| cuda', torch.version.cuda)" || exit 4
    python3 -m bench.gpu_run --data .tgs --out "$results" --work /tmp/gpu-run "$@"
} 2>&1 | tee -a "$results/console.log"
