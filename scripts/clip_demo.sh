#!/usr/bin/env bash
# The CLIP demo: guidance and conditioning by an image-text model, on a CPU in about 17 minutes (a GPU is used when
# present). On the captioned colour Fashion-MNIST of the text demo ("a red sandal on a blue background") it trains
# a clean CLIP, a noise-aware CLIP started from it, and DALL-E 2's decoder on the clean CLIP's image embeddings
# (embedding dropout 0.2: the zero embedding is an unconditional model). Then it
#   - samples the 50 evaluation prompts from the unconditional model (the zero embedding) without guidance (chance),
#     with noise-aware CLIP guidance on x_t and with clean CLIP guidance on x0_hat (unclip_sample.py --prompt),
#   - makes variations of held-out test images and an interpolation between two (--image_variations, --interpolate),
# and judges every sample: the garment (a clean classifier) and both colours (a stated rule) of the caption asked
# for, or of the input image for variations.
#
#   bash scripts/clip_demo.sh                         # outputs in a new folder runs/clip_demo/YYYYmmdd-HHMMSS
#   RUN=runs/mine OVERWRITE=1 bash scripts/clip_demo.sh
#   SAMPLES=500 NOISY_SCALES="0.003 0.01 0.03" CLEAN_SCALES="30 100 300" FID=1 bash scripts/clip_demo.sh  # docs' curve
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:-runs/clip_demo/$(date +%Y%m%d-%H%M%S)}
CLIP_STEPS=${CLIP_STEPS:-800}               # clean CLIP updates (batch 128)
NOISY_STEPS=${NOISY_STEPS:-300}             # noise-aware CLIP updates, started from the clean one
DECODER_STEPS=${DECODER_STEPS:-1200}        # decoder updates (batch 32)
SAMPLES=${SAMPLES:-200}                     # samples per guided run (prompt i % 50 for sample i)
NOISY_SCALES=${NOISY_SCALES:-0.01}          # noise-aware CLIP guidance scales, one run each
CLEAN_SCALES=${CLEAN_SCALES:-100}           # clean CLIP guidance scales, one run each
VARIATION_INPUTS=${VARIATION_INPUTS:-4}     # held-out test images per prompt to vary (4: 200 inputs)
VARIATIONS=${VARIATIONS:-2}                 # variations per input
VARIATION_SCALE=${VARIATION_SCALE:-3}       # classifier-free guidance W of the variations (zero embedding unconditional)
SAMPLER_FLAGS=${SAMPLER_FLAGS:-"--sampler ddim --timestep_respacing 25"}
PER_CLASS=${PER_CLASS:-2000}                # training images exported per class
FID=${FID:-0}                               # 1: FID of every run against 2,000 real test images of the prompts
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

# Both CLIPs: 28 px images in 7 px patches, two blocks of width 128 on each side, captions as 16 CLIP tokens.
CLIP_FLAGS="--clip_image_size 28 --clip_patch_size 7 --clip_width 128 --clip_head_channels 32 --clip_image_heads 4
  --clip_image_layers 2 --clip_text_heads 4 --clip_text_layers 2 --clip_text_ctx 16 --noise_schedule cosine
  --batch_size 128 --lr 1e-3 --log_interval 100 --save_interval 100000"
# The decoder: the text demo's UNet, the embedding projected into the timestep embedding and 4 tokens of width 64.
DECODER_FLAGS="--image_size 28 --num_channels 32 --num_res_blocks 1 --channel_mult 1,2,2 --attention_resolutions 7
  --num_heads 2 --num_head_channels -1 --dropout 0 --resblock_updown False --xf_width 64 --noise_schedule cosine
  --clip_emb_dropout_prob 0.2"
SAMPLE_FLAGS="$SAMPLER_FLAGS --batch_size 100 --seed 0 --progress False"
START=$SECONDS
step() { echo "[$((SECONDS - START)) s] $*"; }

if [ ! -e "$DATA/done" ]; then
  step "exporting captioned Fashion-MNIST to $DATA (the held-out combinations left out)"
  python datasets/fashion_mnist_captions.py --out_dir "$DATA" --per_class "$PER_CLASS"
  touch "$DATA/done"
fi
mkdir -p "$RUN"
$JUDGE prompts "$RUN/prompts.txt"
$JUDGE variation_inputs "$RUN/prompts.txt" "$RUN/variation_inputs" --per_prompt "$VARIATION_INPUTS"

step "training a clean CLIP ($CLIP_STEPS steps)"
OPENAI_LOGDIR="$RUN/clip" python scripts/clip_train.py --data_dir "$DATA" $CLIP_FLAGS --clip_noise_aware False \
  --max_steps "$CLIP_STEPS"
CLIP=$(ls "$RUN"/clip/model*.pt | sort | tail -1)
step "training a noise-aware CLIP from it ($NOISY_STEPS steps on x_t, t uniform over the 1000 cosine steps)"
OPENAI_LOGDIR="$RUN/noisy_clip" python scripts/clip_train.py --data_dir "$DATA" $CLIP_FLAGS --clip_noise_aware True \
  --init_checkpoint "$CLIP" --max_steps "$NOISY_STEPS"
NOISY_CLIP=$(ls "$RUN"/noisy_clip/model*.pt | sort | tail -1)
step "training the decoder on the clean CLIP's image embeddings ($DECODER_STEPS steps)"
OPENAI_LOGDIR="$RUN/decoder" python scripts/unclip_train.py --data_dir "$DATA" --clip_model_path "$CLIP" \
  $DECODER_FLAGS --batch_size 32 --lr 2e-3 --ema_rate 0.999 --ema_warmup True --max_steps "$DECODER_STEPS" \
  --log_interval 200 --save_interval 100000
DECODER=$(ls "$RUN"/decoder/ema_0.999_*.pt | sort | tail -1)

PROMPTED="$SAMPLE_FLAGS --model_path $DECODER --prompts_file $RUN/prompts.txt --num_samples $SAMPLES"
step "sampling the prompts from the zero embedding: no guidance (chance)"
OPENAI_LOGDIR="$RUN/unguided" python scripts/unclip_sample.py $PROMPTED --clip_model_path "$NOISY_CLIP" --clip_scale 0
RUNS="$RUN/unguided"
for scale in $NOISY_SCALES; do
  step "sampling the prompts: noise-aware CLIP guidance, scale $scale"
  OPENAI_LOGDIR="$RUN/noisy_$scale" python scripts/unclip_sample.py $PROMPTED --clip_model_path "$NOISY_CLIP" \
    --clip_guidance noisy --clip_scale "$scale"
  RUNS="$RUNS $RUN/noisy_$scale"
done
for scale in $CLEAN_SCALES; do
  # x0_hat unclipped (--clip_denoised False), as the CLIP-guided notebooks differentiate it: the clamp to [-1, 1]
  # has no gradient where x0_hat passes it, and the palette's colours lie on those bounds
  step "sampling the prompts: clean CLIP guidance on x0_hat, scale $scale"
  OPENAI_LOGDIR="$RUN/clean_$scale" python scripts/unclip_sample.py $PROMPTED --clip_model_path "$CLIP" \
    --clip_guidance clean --clip_scale "$scale" --clip_denoised False
  RUNS="$RUNS $RUN/clean_$scale"
done
step "variations: $VARIATIONS of each of the $((50 * VARIATION_INPUTS)) held-out test images, W = $VARIATION_SCALE"
OPENAI_LOGDIR="$RUN/variations" python scripts/unclip_sample.py $SAMPLE_FLAGS --model_path "$DECODER" \
  --image_variations "$RUN/variation_inputs" --variations_per_image "$VARIATIONS" --guidance_scale "$VARIATION_SCALE"
step "interpolation: a red t-shirt on green to a white coat on black"
OPENAI_LOGDIR="$RUN/interpolation" python scripts/unclip_sample.py $SAMPLE_FLAGS --model_path "$DECODER" \
  --interpolate "$RUN/variation_inputs/input_000.png" "$RUN/variation_inputs/input_004.png" --steps 8 \
  --guidance_scale "$VARIATION_SCALE"

FID_FLAGS=""
if [ "$FID" = 1 ]; then
  step "rendering real images of the prompts: 2,000 of the test split (the reference), 500 of the training split (the floor)"
  $JUDGE real "$RUN/prompts.txt" "$RUN/real_t10k.npz" --per_prompt 40 --split t10k
  $JUDGE real "$RUN/prompts.txt" "$RUN/real_train.npz" --per_prompt 10 --split train
  python evaluations/evaluator.py --save_stats "$RUN/real_t10k_stats.npz" "$RUN/real_t10k.npz"  # one Inception pass
  FID_FLAGS="--ref_batch $RUN/real_t10k_stats.npz --real_images $RUN/real_train.npz"
fi
step "judging the guided samples against their prompts"
$JUDGE score --cache "$JUDGE_CACHE" --json "$RUN/accuracy.json" $FID_FLAGS $(for r in $RUNS; do ls "$r"/samples_*.npz; done)
step "judging the variations against their inputs"
$JUDGE variations --cache "$JUDGE_CACHE" --json "$RUN/variations.json" "$RUN"/variations/samples_*.npz \
  --inputs "$RUN/variation_inputs/inputs.npz" --prompts "$RUN/variation_inputs/prompts.txt" --per_input "$VARIATIONS"
step "done: grids in $RUN/*/prompts_grid.png (one row per prompt), $RUN/variations/variations_grid.png (the input
  first), $RUN/interpolation/interpolation_grid.png; accuracies in $RUN/accuracy.json and $RUN/variations.json"
