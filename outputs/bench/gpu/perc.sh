# The H200 check behind outputs/bench/gpu/perceptual_layout.json: run from the repository root with OUT set.
python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/.site:$PWD PYTHONUNBUFFERED=1
timeout 150 python3 outputs/bench/gpu/perc.py 2>&1 | grep -v Warning
