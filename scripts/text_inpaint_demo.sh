#!/usr/bin/env bash
# Inpainting by prompt on the text demo's model (run scripts/text_demo.sh first): the centre box of test images
# is erased and refilled toward a prompt that asks for the same garment and background in another garment colour.
# Two ways: GLIDE's inpainting model (fine-tuned from the demo's base model, the known image and mask as inputs),
# and RePaint with the demo's base model itself. The judge reads the garment, the hole's colour, and how far the
# known pixels moved. About 10 minutes on the 2-core CPU.
#
#   RUN=runs/text_demo/YYYYmmdd-HHMMSS bash scripts/text_inpaint_demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=${RUN:?set RUN to a scripts/text_demo.sh run folder}
STEPS=${STEPS:-500}                         # fine-tuning updates of the inpainting model
PER_PROMPT=${PER_PROMPT:-2}                 # test images per evaluation prompt (50 prompts)
GUIDANCE_SCALE=${GUIDANCE_SCALE:-3}
EDIT_STEPS=${EDIT_STEPS:-25}                # sampling steps of both methods (RePaint: jump 5, 5 resamplings)
JUDGE_CACHE=${JUDGE_CACHE:-data/fashion_judge_28px.pt}
DATA=${DATA:-data/fashion_captions_28px_2000}
JUDGE="python datasets/fashion_mnist_caption_judge.py"
OUT="$RUN/inpaint"
BASE=$(ls "$RUN"/model/ema_0.999_*.pt | sort | tail -1)
if [ -e "$OUT" ]; then
  if [ "${OVERWRITE:-0}" != 1 ]; then
    echo "$OUT exists: set OVERWRITE=1 to replace it" >&2
    exit 1
  fi
  rm -rf "$OUT"
fi
START=$SECONDS
step() { echo "[$((SECONDS - START)) s] $*"; }

mkdir -p "$OUT"
$JUDGE inpaint_inputs "$RUN/prompts.txt" "$OUT" --per_prompt "$PER_PROMPT"
step "fine-tuning the inpainting model from $BASE ($STEPS steps, random masks)"
OPENAI_LOGDIR="$OUT/model" python scripts/text_train.py --data_dir "$DATA" --init_checkpoint "$BASE" \
  --inpaint True --batch_size 32 --lr 1e-3 --ema_rate 0.999 --ema_warmup True --max_steps "$STEPS" \
  --log_interval 100 --save_interval 100000
MODEL=$(ls "$OUT"/model/ema_0.999_*.pt | sort | tail -1)

EDIT="python scripts/image_edit.py --input $OUT/inputs.npz --prompts_file $OUT/prompts.txt --task inpaint --mask box
  --guidance_scale $GUIDANCE_SCALE --seed 0 --batch_size 100 --progress False"
step "inpainting: GLIDE's recipe with the inpainting model (DPM-Solver++(2M) SDE, $EDIT_STEPS steps)"
OPENAI_LOGDIR="$OUT/glide" $EDIT --model_path "$MODEL" --method glide --sampler dpm++2m-sde \
  --timestep_respacing "$EDIT_STEPS" --lower_order_final True
step "inpainting: RePaint with the base model ($EDIT_STEPS steps, jump 5, 5 resamplings)"
OPENAI_LOGDIR="$OUT/repaint" $EDIT --model_path "$BASE" --method repaint --timestep_respacing "$EDIT_STEPS" \
  --jump_length 5 --resamplings 5
step "judging: garment, the hole's colour, the known pixels"
$JUDGE inpaint --cache "$JUDGE_CACHE" --inputs "$OUT/inputs.npz" --prompts "$OUT/prompts.txt" --mask box \
  --json "$OUT/accuracy.json" "$OUT"/glide/edited_*.npz "$OUT"/repaint/edited_*.npz
step "done: $OUT/*/edit_grid.png (input | masked | output), scores in $OUT/accuracy.json"
