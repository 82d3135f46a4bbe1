#!/usr/bin/env bash
# Quick start: export Fashion-MNIST, train a small class-conditional ADM on it, sample a grid.
# Runs on the CPU in a few minutes (a GPU is used when present). Outputs go to $RUN (default runs/quickstart).
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/quickstart}
STEPS=${STEPS:-400}
MODEL_FLAGS="--image_size 32 --num_channels 64 --num_res_blocks 1 --channel_mult 1,2,2 --attention_resolutions 8
  --class_cond True --num_classes 10 --learn_sigma True --noise_schedule cosine --dropout 0.1"

python datasets/fashion_mnist.py --out_dir data/fashion --per_class 500
OPENAI_LOGDIR="$RUN/train" python scripts/image_train.py --data_dir data/fashion $MODEL_FLAGS \
  --batch_size 16 --lr 1e-3 --max_steps "$STEPS" --log_interval 50 --save_interval 100000
CKPT=$(ls "$RUN"/train/ema_0.9999_*.pt | sort | tail -1)
OPENAI_LOGDIR="$RUN/samples" python scripts/image_sample.py $MODEL_FLAGS --model_path "$CKPT" \
  --timestep_respacing 50 --num_samples 16 --batch_size 16 --seed 0 --class_labels 0,1,2,3,4,5,6,7,8,9
echo "samples: $RUN/samples/samples_16x32x32x3.npz and $RUN/samples/samples_grid.png"
