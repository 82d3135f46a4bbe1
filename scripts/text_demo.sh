#!/usr/bin/env bash
# The text-to-image demo: captions a class label cannot express, on a CPU in about 20 minutes (a GPU is used when
# present). Trains a small GLIDE-style text model on coloured Fashion-MNIST ("a red sandal on a blue background";
# ten garment/colour/background combinations are never in the training set), samples 50 prompts (the 10 unseen
# combinations, then 40 seen ones) at guidance 1, at guidance $GUIDANCE_SCALE and with the empty caption, and
# judges each sample's garment (a clean classifier), garment colour and background colour (a stated rule).
#
#   bash scripts/text_demo.sh                        # outputs in a new folder runs/text_demo/YYYYmmdd-HHMMSS
#   RUN=runs/mine OVERWRITE=1 bash scripts/text_demo.sh
#   FID=1 bash scripts/text_demo.sh                  # adds each run's FID against real images of the prompts
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/text_demo/$(date +%Y%m%d-%H%M%S)}
STEPS=${STEPS:-2000}                        # text model updates
SAMPLES=${SAMPLES:-500}                     # samples per run (prompt i % 50 for sample i)
GUIDANCE_SCALE=${GUIDANCE_SCALE:-3}         # classifier-free guidance W (the empty caption as the unconditional branch)
SAMPLER_FLAGS=${SAMPLER_FLAGS:-"--sampler dpm++2m-sde --timestep_respacing 25 --lower_order_final True"}
PER_CLASS=${PER_CLASS:-2000}                # training images exported per class
FID=${FID:-0}                               # 1: FID of every run against 10,000 real images of the prompts
DATA=${DATA:-data/fashion_captions_28px_${PER_CLASS}}
JUDGE_CACHE=${JUDGE_CACHE:-data/fashion_judge_28px.pt}
JUDGE="python datasets/fashion_mnist_caption_judge.py"
if [ -e "$RUN" ]; then
  if [ "${OVERWRITE:-0}" != 1 ]; then
    echo "$RUN exists: choose another RUN=... or set OVERWRITE=1 to replace it" >&2
    exit 1
  fi
  rm -rf "$RUN"
fi

# 28 px RGB; captions are at most 9 GPT-2 tokens. The UNet is the quickstart's; the caption transformer has two
# blocks of width 64. GLIDE's choices: learned sigma with the hybrid loss, the cosine schedule, caption dropout.
MODEL_FLAGS="--image_size 28 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2,2 --attention_resolutions 7
  --num_heads 2 --num_head_channels -1 --dropout 0 --resblock_updown False --text_ctx 12 --xf_width 64 --xf_layers 2
  --xf_heads 2 --noise_schedule cosine --caption_dropout_prob 0.1"
SAMPLE_FLAGS="$SAMPLER_FLAGS --num_samples $SAMPLES --batch_size 250 --seed 0 --progress False"
START=$SECONDS
step() { echo "[$((SECONDS - START)) s] $*"; }

if [ ! -e "$DATA/done" ]; then
  step "exporting captioned Fashion-MNIST to $DATA (the held-out combinations left out)"
  python datasets/fashion_mnist_captions.py --out_dir "$DATA" --per_class "$PER_CLASS"
  touch "$DATA/done"
fi
mkdir -p "$RUN"
$JUDGE prompts "$RUN/prompts.txt"
step "training the text model ($STEPS steps, caption dropout 0.1)"
OPENAI_LOGDIR="$RUN/model" python scripts/text_train.py --data_dir "$DATA" $MODEL_FLAGS \
  --batch_size 32 --lr 2e-3 --ema_rate 0.999 --ema_warmup True --max_steps "$STEPS" --log_interval 250 \
  --save_interval 100000
MODEL=$(ls "$RUN"/model/ema_0.999_*.pt | sort | tail -1)

step "sampling: the prompts, no guidance (W = 1)"
OPENAI_LOGDIR="$RUN/conditional" python scripts/text_sample.py $SAMPLE_FLAGS --model_path "$MODEL" \
  --prompts_file "$RUN/prompts.txt"
step "sampling: the prompts, classifier-free guidance W = $GUIDANCE_SCALE"
OPENAI_LOGDIR="$RUN/guided" python scripts/text_sample.py $SAMPLE_FLAGS --model_path "$MODEL" \
  --prompts_file "$RUN/prompts.txt" --guidance_scale "$GUIDANCE_SCALE"
step "sampling: the empty caption (the chance level of the judge)"
OPENAI_LOGDIR="$RUN/empty_caption" python scripts/text_sample.py $SAMPLE_FLAGS --model_path "$MODEL" --prompt ""

FID_FLAGS=""
if [ "$FID" = 1 ]; then
  step "rendering real images of the prompts: 10,000 of the test split (the reference), 1,000 of the training split (the floor)"
  $JUDGE real "$RUN/prompts.txt" "$RUN/real_t10k.npz" --per_prompt 200 --split t10k
  $JUDGE real "$RUN/prompts.txt" "$RUN/real_train.npz" --per_prompt 20 --split train
  python evaluations/evaluator.py --save_stats "$RUN/real_t10k_stats.npz" "$RUN/real_t10k.npz"  # one Inception pass
  FID_FLAGS="--ref_batch $RUN/real_t10k_stats.npz --real_images $RUN/real_train.npz"
fi
step "judging garment, garment colour and background colour of every sample"
$JUDGE score --cache "$JUDGE_CACHE" --json "$RUN/accuracy.json" $FID_FLAGS \
  "$RUN"/conditional/samples_*.npz "$RUN"/guided/samples_*.npz
$JUDGE score --cache "$JUDGE_CACHE" --json "$RUN/accuracy_empty_caption.json" --prompts "$RUN/prompts.txt" \
  $( [ "$FID" = 1 ] && echo "--ref_batch $RUN/real_t10k_stats.npz" ) "$RUN"/empty_caption/samples_*.npz
step "done: grids (one row per prompt, the 10 unseen combinations first) in $RUN/*/prompts_grid.png, samples in
  $RUN/*/samples_*.npz, accuracies in $RUN/accuracy*.json. More samples (the flags come from the checkpoint's run):
  python scripts/text_sample.py --model_path $MODEL --prompt \"a red sandal on a blue background\" --guidance_scale 3"
