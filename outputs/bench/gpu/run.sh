# The GPU check behind outputs/bench/gpu (one H200, no internet there): nibabel and lpips come as wheels in .whl/,
# then the paper preset is trained and evaluated through sr3d (paper_train.py), then sr3d_bench --gpu.
# Run from the repository root with OUT set to a folder for the results.
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --target .site .whl/*.whl || exit 1
export PYTHONPATH=$PWD/.site:$PWD PYTHONUNBUFFERED=1
L=$OUT/all.log
nvidia-smi --query-gpu=name,memory.total,clocks.sm --format=csv | tee -a $L
python3 -c "import torch, accelerate; print('torch', torch.__version__, 'accelerate', accelerate.__version__, torch.cuda.get_device_name(0))" | tee -a $L
timeout 120 python3 outputs/bench/gpu/paper_train.py $OUT '{}' paper >> $L 2>&1; echo "paper_train exit $?" | tee -a $L
timeout 100 python3 outputs/bench/gpu/paper_train.py $OUT '{"vgg_n": "full", "vgg_chunk": 1024, "epochs": 1}' full >> $L 2>&1; echo "full_train exit $?" | tee -a $L
(cd $OUT && tar cf runs.tar runs && rm -rf runs)
timeout 290 python3 -m sr3d.bench --gpu --out $OUT/gpu >> $L 2>&1; echo "bench exit $?" | tee -a $L
grep -E "trained in|evaluated in|^sr3d |^tricubic|Error|error" $L | cut -c1-300
tail -42 $L
