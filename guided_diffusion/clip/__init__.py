"""GLIDE's noisy CLIP: its encoders in glide-text2im's layout, the model with open_clip's interface and GLIDE's
cond_fn, CLIP's BPE tokenizer, and GLIDE's released files read strictly (docs/clip.md)."""
