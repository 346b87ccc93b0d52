# The GPU speed check (issue 12): one command on a GPU machine with no internet, cut off at 440 s by its timeout. Not yet run on a GPU.
# From this machine, with the device tool:  run(command="bash outputs/bench/gpu/speed.sh", carry=[".whl"], timeout_s=480)
# .whl/ (git-ignored) holds the wheels the GPU machine's Python 3.12 lacks; make it here with
#   pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 --no-deps \
#       nibabel lpips 'fastcore>=1.12,<2' -d .whl
# It writes $OUT/gpu/bench.json and bench.md (sr3d_bench --gpu without the torch.compile variant, which alone costs
# minutes): the paper step's variants with today's code path as the `before` row, the generator's backward over its
# forward, the step's kernels, and two real epochs of the paper preset. Copy them to outputs/bench/gpu/ to commit.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/.site:$PWD PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv
timeout 440 python3 -m sr3d.bench --gpu --no-compile --out $OUT/gpu > $OUT/bench.log 2>&1
echo "sr3d_bench --gpu exit $?"
tail -120 $OUT/bench.log
