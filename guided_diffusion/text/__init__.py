"""Text conditioning: GLIDE's tokenizer and text-conditional UNet, captions."""
