"""The model layer: the GPT-2 module and its loss (gpt2, loss), generation (generate) and the
weight layouts of CPU decoding (cpu_decode)."""
